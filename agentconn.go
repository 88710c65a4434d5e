package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// agentStream opens a new stream to the VM's agent (the VM must be
// running) and sends req. Cancelling ctx closes the stream; the returned
// stop undoes that and must be called once the stream is done with.
func (vm *VM) agentStream(ctx context.Context, req agentproto.Request) (*agentproto.Conn, func(), error) {
	r, err := vm.runningRow(ctx)
	if err != nil {
		return nil, nil, err
	}
	conn, err := vm.agentConn(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	c := agentproto.NewConn(conn)
	if err := c.WriteJSON(agentproto.FrameRequest, req); err != nil {
		c.Close()
		return nil, nil, err
	}
	stopCancel := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() { stopCancel(); c.Close() }, nil
}

// runningRow reads the VM's row and fails with ErrState unless it says
// running. It skips get's check that the supervisor is alive, a read of
// /proc on every command: agentConn notices a dead supervisor anyway, and
// then reconciles.
func (vm *VM) runningRow(ctx context.Context) (store.VM, error) {
	r, err := vm.h.row(ctx, vm.id)
	if err != nil {
		return r, err
	}
	if r.Status != store.StatusRunning {
		r = vm.h.reconcile(ctx, r)
		return r, fmt.Errorf("%w: vm %s is %s, not running", ErrState, vm.id, r.Status)
	}
	return r, nil
}

// agentConn opens a connection to the agent of the VM in row r, marking
// the row as an error when its supervisor turns out to be gone.
func (vm *VM) agentConn(ctx context.Context, r store.VM) (io.ReadWriteCloser, error) {
	conn, err := supervisor.AgentConn(ctx, r.Dir)
	if errors.Is(err, supervisor.ErrNotRunning) {
		r = vm.h.reconcile(ctx, r)
		return nil, fmt.Errorf("%w: vm %s is %s, not running (%v)", ErrState, vm.id, r.Status, err)
	}
	return conn, err
}

// agentCall sends req and reads the agent's Response.
func (vm *VM) agentCall(ctx context.Context, req agentproto.Request) (agentproto.Response, error) {
	c, done, err := vm.agentStream(ctx, req)
	if err != nil {
		return agentproto.Response{}, err
	}
	defer done()
	return readResponse(ctx, c)
}

// readResponse reads a Response, turning the guest's error into a
// GuestError and a closed stream after cancellation into ctx.Err().
func readResponse(ctx context.Context, c *agentproto.Conn) (agentproto.Response, error) {
	var resp agentproto.Response
	err := c.ReadJSON(agentproto.FrameResponse, &resp)
	return resp, streamErr(ctx, err)
}

func streamErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ge *agentproto.Error
	if errors.As(err, &ge) {
		return newGuestError(ge.Message)
	}
	return err
}

// GuestError is an operation the guest refused or that failed there. Its
// message names the guest path concerned; errors.Is matches it against
// fs.ErrNotExist, fs.ErrExist, fs.ErrPermission, syscall.ENOSPC,
// syscall.ENOTDIR, syscall.EISDIR and syscall.ENOTEMPTY when the guest's
// message says so.
type GuestError struct {
	Message string
	kind    error
}

func newGuestError(msg string) *GuestError {
	e := &GuestError{Message: msg}
	for _, k := range []struct {
		suffix string
		err    error
	}{
		{"no such file or directory", fs.ErrNotExist},
		{"file exists", fs.ErrExist},
		{"permission denied", fs.ErrPermission},
		{"operation not permitted", fs.ErrPermission},
		{"no space left on device", syscall.ENOSPC},
		{"not a directory", syscall.ENOTDIR},
		{"is a directory", syscall.EISDIR},
		{"directory not empty", syscall.ENOTEMPTY},
	} {
		if strings.HasSuffix(strings.ToLower(msg), k.suffix) {
			e.kind = k.err
			break
		}
	}
	return e
}

func (e *GuestError) Error() string { return "guest: " + e.Message }

// Unwrap returns the standard error the message corresponds to, if any.
func (e *GuestError) Unwrap() error { return e.kind }

// frameSink writes each Write as one data frame of type t.
type frameSink struct {
	c *agentproto.Conn
	t agentproto.FrameType
}

func (w frameSink) Write(p []byte) (int, error) {
	if err := w.c.WriteFrame(w.t, p); err != nil {
		return 0, &streamWriteError{err}
	}
	return len(p), nil
}

// streamWriteError is a write to an agent stream that failed: the other
// end went away, as opposed to a local source of data failing.
type streamWriteError struct{ err error }

func (e *streamWriteError) Error() string { return e.err.Error() }
func (e *streamWriteError) Unwrap() error { return e.err }

// frameSource reads the guest's data frames until FrameDone (io.EOF, with
// done set) or FrameError (a GuestError).
type frameSource struct {
	ctx  context.Context
	c    *agentproto.Conn
	buf  []byte
	left []byte
	done *agentproto.Done
}

func newFrameSource(ctx context.Context, c *agentproto.Conn) *frameSource {
	return &frameSource{ctx: ctx, c: c, buf: make([]byte, agentproto.MaxFrame)}
}

func (r *frameSource) Read(p []byte) (int, error) {
	for len(r.left) == 0 {
		if r.done != nil {
			return 0, io.EOF
		}
		t, b, err := r.c.ReadFrame(r.buf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, streamErr(r.ctx, err)
		}
		switch t {
		case agentproto.FrameStdout:
			r.left = b
		case agentproto.FrameDone:
			var d agentproto.Done
			if err := jsonUnmarshal(b, &d); err != nil {
				return 0, err
			}
			r.done = &d
		case agentproto.FrameError:
			var e agentproto.Error
			jsonUnmarshal(b, &e)
			return 0, newGuestError(e.Message)
		}
	}
	n := copy(p, r.left)
	r.left = r.left[n:]
	return n, nil
}

// finish reads what is left up to FrameDone and returns it.
func (r *frameSource) finish() (agentproto.Done, error) {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return agentproto.Done{}, err
	}
	return *r.done, nil
}
