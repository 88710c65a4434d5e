package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// execIO holds one process's standard streams: pipes, or a PTY when the
// request asks for a terminal. The parent's ends are pollable, so closing
// them unblocks a pending read or write. The child's ends are plain fds,
// never in Go's poller: each exec costs a few system calls less, and under
// emulation a system call is tens of microseconds.
type execIO struct {
	child [3]int    // the child's fds 0, 1, 2 (closed in the parent once it started); -1 when none
	tty   *os.File  // the terminal, which is all three child fds on a PTY
	outs  []execOut // what the host receives
	pty   *os.File  // the PTY master, when TTY

	mu    sync.Mutex // guards stdin
	stdin *os.File   // the host's stdin goes here; nil when none or closed
}

// execOut is one output stream and the frame type it is sent as.
type execOut struct {
	r     *os.File
	frame agentproto.FrameType
}

func newExecIO(req *agentproto.ExecRequest) (*execIO, error) {
	if req.TTY {
		return newPTYIO(req)
	}
	e := &execIO{child: [3]int{-1, -1, -1}}
	ok := false
	defer func() {
		if !ok {
			e.closeChild()
			e.closeAll()
		}
	}()
	var err error
	if req.Stdin {
		if e.stdin, e.child[0], err = pipe(false); err != nil {
			return nil, err
		}
	} else if e.child[0], err = unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("opening %s: %w", os.DevNull, err)
	}
	for i, frame := range []agentproto.FrameType{agentproto.FrameStdout, agentproto.FrameStderr} {
		var r *os.File
		if r, e.child[1+i], err = pipe(true); err != nil {
			return nil, err
		}
		e.outs = append(e.outs, execOut{r: r, frame: frame})
	}
	ok = true
	return e, nil
}

// pipe makes a pipe between parent and child: the parent's end (the read
// end when parentReads) non-blocking in Go's poller, the child's a plain,
// blocking fd.
func pipe(parentReads bool) (parent *os.File, child int, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, -1, fmt.Errorf("making a pipe: %w", err)
	}
	mine, theirs := p[1], p[0]
	if parentReads {
		mine, theirs = p[0], p[1]
	}
	// Each end has its own file status flags: only the child's blocks.
	if _, err := unix.FcntlInt(uintptr(theirs), unix.F_SETFL, 0); err != nil {
		unix.Close(mine)
		unix.Close(theirs)
		return nil, -1, fmt.Errorf("making a pipe: %w", err)
	}
	return os.NewFile(uintptr(mine), "|pipe"), theirs, nil
}

// growPipe makes a pipe's buffer 1 MiB (best effort; a terminal is no
// pipe), for bigger reads and so bigger frames. It goes through
// SyscallConn, not Fd, which would make the file blocking and stop Close
// from interrupting a Read.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
}

// newPTYIO gives the process a new terminal as stdin, stdout and stderr;
// everything it prints arrives as FrameStdout.
func newPTYIO(req *agentproto.ExecRequest) (*execIO, error) {
	m, tty, err := pty.Open()
	if err != nil {
		return nil, err
	}
	master, err := pollable(m)
	if err != nil {
		tty.Close()
		return nil, err
	}
	if req.Rows > 0 && req.Cols > 0 {
		pty.Setsize(master, &pty.Winsize{Rows: req.Rows, Cols: req.Cols})
	}
	fd := int(tty.Fd()) // blocking, as the child wants it
	e := &execIO{child: [3]int{fd, fd, fd}, tty: tty, pty: master}
	e.outs = []execOut{{r: master, frame: agentproto.FrameStdout}}
	if req.Stdin {
		e.stdin = master
	}
	return e, nil
}

// childFds returns the child's standard fds for ForkExec.
func (e *execIO) childFds() []uintptr {
	return []uintptr{uintptr(e.child[0]), uintptr(e.child[1]), uintptr(e.child[2])}
}

// sysProcAttr puts the child in its own process group (or, on a PTY, its
// own session with the terminal as controlling tty).
func (e *execIO) sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	if e.pty != nil {
		return &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: cred}
	}
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// closeChild closes the parent's copies of the child's fds.
func (e *execIO) closeChild() {
	if e.tty != nil {
		e.tty.Close()
		e.tty = nil
	} else {
		for _, fd := range e.child {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}
	e.child = [3]int{-1, -1, -1}
}

func (e *execIO) writeStdin(p []byte) {
	e.mu.Lock()
	w := e.stdin
	e.mu.Unlock()
	if w != nil {
		w.Write(p) // an error means the process closed its stdin: drop the data
	}
}

// closeStdin ends the process's input: EOF on a pipe, ^D on a terminal.
func (e *execIO) closeStdin() {
	e.mu.Lock()
	w := e.stdin
	e.stdin = nil
	e.mu.Unlock()
	switch {
	case w == nil:
	case w == e.pty:
		w.Write([]byte{4})
	default:
		w.Close()
	}
}

func (e *execIO) resize(rows, cols uint16) {
	if e.pty != nil && rows > 0 && cols > 0 {
		pty.Setsize(e.pty, &pty.Winsize{Rows: rows, Cols: cols})
	}
}

// closeOutputs stops reading the process's output.
func (e *execIO) closeOutputs() {
	for _, o := range e.outs {
		o.r.Close()
	}
}

// closeAll closes every parent-side fd.
// release closes every fd of a set that was never used.
func (e *execIO) release() {
	e.closeChild()
	e.closeAll()
}

func (e *execIO) closeAll() {
	e.mu.Lock()
	w := e.stdin
	e.stdin = nil
	e.mu.Unlock()
	if w != nil {
		w.Close()
	}
	e.closeOutputs()
}

// pollable returns f as a non-blocking file in Go's poller, so that Close
// interrupts a pending Read (pty.Open leaves the master blocking). f is
// closed.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func jsonUnmarshal(p []byte, v any) error { return json.Unmarshal(p, v) }
