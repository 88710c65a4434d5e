package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ErrNotRunning is returned when no supervisor answers on a VM's socket.
var ErrNotRunning = errors.New("supervisor not running")

// Spawn starts a supervisor for the VM in dir as a detached process (its own
// session, outliving the caller) running exe with args, and waits until it
// reports the VM up or failed. The VM's row must already hold its Plan.
func Spawn(ctx context.Context, exe string, args []string, dir string) (pid int, err error) {
	logf, err := os.OpenFile(filepath.Join(dir, LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("opening supervisor log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	cmd := exec.Command(exe, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w} // fd 3: the ready pipe
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, fmt.Errorf("starting supervisor: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // reap it if this process lives longer than the VM
	msg := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		msg <- strings.TrimSpace(line)
	}()
	select {
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		return 0, ctx.Err()
	case m := <-msg:
		switch {
		case m == "ok":
			return cmd.Process.Pid, nil
		case strings.HasPrefix(m, "error: "):
			// It exits right after saying so: let it, so that a caller
			// cleaning up finds no process left.
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
			}
			return 0, errors.New(strings.TrimPrefix(m, "error: "))
		default:
			return 0, fmt.Errorf("supervisor exited during start-up; see %s", filepath.Join(dir, LogFile))
		}
	}
}

// dial opens a control connection and sends req.
func dial(ctx context.Context, dir string, req request) (net.Conn, *bufio.Reader, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(dir, ControlSocket))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotRunning, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := writeLine(c, req); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("%w: %v", ErrNotRunning, err)
	}
	return c, bufio.NewReader(c), nil
}

// call sends req and reads the reply line.
func call(ctx context.Context, dir string, req request) (reply, net.Conn, *bufio.Reader, error) {
	c, br, err := dial(ctx, dir, req)
	if err != nil {
		return reply{}, nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var rep reply
	if err := readLine(br, &rep); err != nil {
		c.Close()
		if ctx.Err() != nil {
			return rep, nil, nil, ctx.Err()
		}
		return rep, nil, nil, fmt.Errorf("%w: %v", ErrNotRunning, err)
	}
	if !rep.OK {
		c.Close()
		return rep, nil, nil, errors.New(rep.Error)
	}
	return rep, c, br, nil
}

// AgentConn returns a connection that the supervisor joins to a new stream
// to the guest agent; the caller speaks agentproto on it and closes it.
// It does not wait for the supervisor's answer: the caller's first frames
// travel right behind the request, and the answer is read by the first
// Read, which fails with the supervisor's error if it could not open the
// stream. That saves a round trip through the supervisor per call.
func AgentConn(ctx context.Context, dir string) (io.ReadWriteCloser, error) {
	c, br, err := dial(ctx, dir, request{Op: opAgent})
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return &agentConn{readAheadConn: readAheadConn{r: br, Conn: c}}, nil
}

// agentConn reads the supervisor's reply before the agent's bytes. Reads
// must come from one goroutine.
type agentConn struct {
	readAheadConn
	replied bool
	err     error // the reply's error, returned by every Read
}

func (c *agentConn) Read(p []byte) (int, error) {
	if !c.replied {
		c.replied = true
		var rep reply
		switch err := readLine(c.r, &rep); {
		case err != nil:
			c.err = fmt.Errorf("%w: %v", ErrNotRunning, err)
		case !rep.OK:
			c.err = fmt.Errorf("supervisor: %s", rep.Error)
		}
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.r.Read(p)
}

// Stop asks the supervisor to stop the VM and waits until its VMM has
// exited and its row is final. force skips the guest's clean shutdown.
func Stop(ctx context.Context, dir string, force bool) error {
	_, c, _, err := call(ctx, dir, request{Op: opStop, Force: force})
	if err != nil {
		return err
	}
	return c.Close()
}

// GetStatus asks a running supervisor about its VM.
func GetStatus(ctx context.Context, dir string) (Status, error) {
	rep, c, _, err := call(ctx, dir, request{Op: opStatus})
	if err != nil {
		return Status{}, err
	}
	c.Close()
	if rep.Status == nil {
		return Status{}, errors.New("supervisor sent no status")
	}
	return *rep.Status, nil
}

type readAheadConn struct {
	r *bufio.Reader
	net.Conn
}

func (c *readAheadConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection: the agent sees the end of input.
func (c *readAheadConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
