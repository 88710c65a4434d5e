package agent

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
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
// across exec. Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) is turned into
// SIGINT for PID 1 instead of an immediate reboot, and SIGINT calls
// onCtrlAltDel: a clean power-off that syncs the disks first.
func catchPID1Signals(log *slog.Logger, onCtrlAltDel func()) {
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		log.Warn("ctrl-alt-del stays a hard reboot", "err", err)
	}
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, pid1Signals...)
	go func() {
		for sig := range ch {
			if sig == syscall.SIGINT {
				log.Info("ctrl-alt-del or SIGINT to PID 1: powering off")
				onCtrlAltDel()
				continue
			}
			log.Info("ignoring signal sent to PID 1", "signal", sig)
		}
	}()
}
