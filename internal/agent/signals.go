package agent

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// pid1Signals are the signals whose Go default would end the process. The
// kernel delivers a signal to PID 1 only when it has a handler, and Go
// installs one for each: without this, `kill 1` in the guest (or the SIGINT
// of ctrl-alt-del) would make PID 1 exit and the kernel panic.
var pid1Signals = []os.Signal{
	syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPWR, syscall.SIGALRM,
}

// catchPID1Signals logs and otherwise ignores the signals that would end
// PID 1. They are caught, not set to SIG_IGN, which children would inherit
// across exec.
func catchPID1Signals(log *slog.Logger) {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, pid1Signals...)
	go func() {
		for sig := range ch {
			log.Info("ignoring signal sent to PID 1", "signal", sig)
		}
	}()
}
