// Command smolvm is the CLI, the per-VM supervisor and, as PID 1 in a guest,
// the guest agent: one static binary.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/smolvm/smolvm/internal/agent"
)

func main() {
	if os.Getpid() == 1 {
		agent.Main() // never returns
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "smolvm:", err)
		os.Exit(1)
	}
}

// exitError makes smolvm exit with a command's own exit code, silently.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
