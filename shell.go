package smolvm

import (
	"context"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// WindowSize is a terminal's size in character cells.
type WindowSize struct {
	Rows, Cols uint16
}

// TTY asks for a pseudo-terminal in the guest: the command's stdin,
// stdout and stderr are the terminal, its output arrives on
// RunOptions.Stdout, and what RunOptions.Stdin sends is typed into it (so
// a raw-mode Ctrl-C reaches the guest's foreground process as SIGINT).
type TTY struct {
	Size WindowSize // the initial size (0 leaves the guest's default, 24x80)
	// Resize, when set, delivers new sizes while the command runs (from
	// SIGWINCH, for example); the guest's processes see SIGWINCH.
	Resize <-chan WindowSize
}

func (t *TTY) apply(req *agentproto.ExecRequest) {
	if t == nil {
		return
	}
	req.TTY, req.Rows, req.Cols = true, t.Size.Rows, t.Size.Cols
}

// forwardResizes sends t.Resize's sizes to the guest until the returned
// stop is called.
func (t *TTY) forwardResizes(c *agentproto.Conn) (stop func()) {
	if t == nil || t.Resize == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case sz, ok := <-t.Resize:
				if !ok {
					return
				}
				c.WriteJSON(agentproto.FrameResize, agentproto.Resize{Rows: sz.Rows, Cols: sz.Cols})
			}
		}
	}()
	return func() { close(done) }
}

// Shell runs the guest user's login shell (from the guest's /etc/passwd,
// else /bin/sh) as `smolvm shell` does: with opts.TTY set it is
// interactive; without, it reads commands from opts.Stdin.
func (vm *VM) Shell(ctx context.Context, opts RunOptions) (Result, error) {
	opts.LoginShell = true
	return vm.Run(ctx, nil, opts)
}
