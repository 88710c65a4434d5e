package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// defaultPath is the PATH a process gets unless the request sets one.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// execSpec is a checked exec request, ready to start.
type execSpec struct {
	path string // the file to execute; "" when argv[0] was not found in PATH
	argv []string
	env  []string
	dir  string
	cred *syscall.Credential // nil: the agent's own user
}

// prepareExec checks a request and resolves its user, environment, working
// directory and executable. The working directory is Dir, or / when unset
// (not the user's home: the same request gives the same result whoever runs
// it). The environment is PATH, HOME, USER, HOSTNAME (and TERM on a TTY),
// overridden by the request's Env.
func (s *server) prepareExec(req *agentproto.ExecRequest) (execSpec, error) {
	if req.LoginShell {
		if len(req.Argv) > 0 {
			return execSpec{}, errors.New("exec: a login shell takes no command")
		}
		spec, err := s.prepareExec(&agentproto.ExecRequest{Argv: []string{userShell(s.cfg.Root, req.User)},
			Env: req.Env, BaseEnv: req.BaseEnv, Dir: req.Dir, User: req.User, TTY: req.TTY})
		spec.argv = []string{"-" + filepath.Base(spec.path)}
		req.Argv = []string{spec.path} // for messages about it
		return spec, err
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return execSpec{}, errors.New("exec: empty command")
	}
	u, err := s.users.lookup(s.cfg.Root, req.User)
	if err != nil {
		return execSpec{}, fmt.Errorf("exec: %w", err)
	}
	spec := execSpec{argv: req.Argv, dir: req.Dir}
	if req.User != "" {
		spec.cred = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
	}
	if spec.env, err = s.execEnv(req, u); err != nil {
		return execSpec{}, err
	}
	if spec.dir == "" {
		spec.dir = "/"
	}
	if !filepath.IsAbs(spec.dir) {
		return execSpec{}, fmt.Errorf("exec: working directory %q is not absolute", spec.dir)
	}
	spec.path = lookPath(req.Argv[0], envGet(spec.env, "PATH"))
	if spec.path == "" {
		// Not found: say so of the directory if that is what is wrong.
		if err := checkDir(spec.dir); err != nil {
			return execSpec{}, err
		}
	}
	return spec, nil
}

// checkDir explains a failed start whose cause may be the working
// directory: the child's chdir and execve report the same errnos, so it is
// looked at only then, not before every exec.
func checkDir(dir string) error {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("exec: working directory %q does not exist or is not a directory", dir)
	}
	return nil
}

func (s *server) execEnv(req *agentproto.ExecRequest, u guestUser) ([]string, error) {
	home := u.Home
	if home == "" {
		home = "/"
	}
	env := []string{"PATH=" + defaultPath, "HOME=" + home, "HOSTNAME=" + s.hostname()}
	if u.Name != "" {
		env = append(env, "USER="+u.Name, "LOGNAME="+u.Name)
	}
	if req.TTY {
		env = append(env, "TERM=xterm-256color")
	}
	env, err := s.cfg.State.layerEnv(env, req.BaseEnv)
	if err != nil {
		return nil, err
	}
	for _, kv := range req.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("exec: environment entry %q is not KEY=VALUE", kv)
		}
		env = envSet(env, kv)
	}
	return env, nil
}

// envSet replaces or appends one KEY=VALUE entry.
func envSet(env []string, kv string) []string {
	k, _, _ := strings.Cut(kv, "=")
	for i, e := range env {
		if strings.HasPrefix(e, k+"=") {
			env[i] = kv
			return env
		}
	}
	return append(env, kv)
}

func envGet(env []string, k string) string {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, k+"="); ok {
			return v
		}
	}
	return ""
}

// lookPath finds name in path as a shell does; a name with a slash is used
// as it is. It returns "" when nothing executable is found.
func lookPath(name, path string) string {
	if strings.Contains(name, "/") {
		return name
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		var st unix.Stat_t // not os.Stat: no FileInfo to build for each miss
		if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0 {
			return p
		}
	}
	return ""
}

// exec runs one process for a stream: it answers Response{PID} if asked to,
// streams the process's output, applies the host's stdin, signals and
// resizes, and ends with FrameExit.
func (s *server) exec(ctx context.Context, st net.Conn, c *agentproto.Conn, req *agentproto.ExecRequest) {
	spec, err := s.prepareExec(req)
	if err != nil {
		replyError(c, err)
		return
	}
	if spec.path == "" {
		notRunnable(c, req, 127, req.Argv[0]+": command not found")
		return
	}
	eio, err := s.stdio.get(req)
	if err != nil {
		replyError(c, fmt.Errorf("exec: %w", err))
		return
	}
	pid, wait, err := s.reaper.Start(func() (int, error) {
		return syscall.ForkExec(spec.path, spec.argv, &syscall.ProcAttr{
			Dir: spec.dir, Env: spec.env, Files: eio.childFds(), Sys: eio.sysProcAttr(spec.cred),
		})
	})
	eio.closeChild()
	if err != nil {
		eio.closeAll()
		if derr := checkDir(spec.dir); derr != nil {
			replyError(c, derr)
			return
		}
		if code, msg, ok := execFailure(req.Argv[0], err); ok {
			notRunnable(c, req, code, msg)
			return
		}
		replyError(c, fmt.Errorf("starting %s: %w", req.Argv[0], err))
		return
	}
	s.log.Debug("exec started", "pid", pid, "argv", req.Argv)
	if req.ReportPID {
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{PID: pid})
	}
	status, inputDone := s.runExec(st, c, req, pid, wait, eio)
	s.log.Debug("exec ended", "pid", pid, "code", status.Code, "timed_out", status.TimedOut)
	c.WriteJSON(agentproto.FrameExit, status)
	// The host has its answer: wind down behind it, and make the next
	// command's streams.
	eio.closeAll()
	st.SetReadDeadline(time.Now()) // stop reading host frames
	<-inputDone
	s.stdio.refill()
}

// runExec pumps a started process's I/O until it has exited and its output
// is drained (or the grace period after exit has passed). The returned
// channel closes once the host's input has stopped being applied, which
// the caller ends by a read deadline on st.
func (s *server) runExec(st net.Conn, c *agentproto.Conn, req *agentproto.ExecRequest, pid int, wait <-chan unix.WaitStatus, eio *execIO) (agentproto.ExitStatus, <-chan struct{}) {
	drained := make(chan struct{}, len(eio.outs)) // a value per output at its end
	for _, o := range eio.outs {
		go func() {
			pumpOutput(o.r, o.frame, c)
			drained <- struct{}{}
		}()
	}
	inputDone := make(chan struct{})
	var exited atomic.Bool
	go func() {
		defer close(inputDone)
		s.hostInput(c, pid, eio)
		if !exited.Load() {
			s.hangUp(st, pid, &exited)
		}
	}()
	var timedOut atomic.Bool
	if req.TimeoutMs > 0 {
		t := time.AfterFunc(time.Duration(req.TimeoutMs)*time.Millisecond, func() {
			timedOut.Store(true)
			killGroup(pid, unix.SIGKILL)
		})
		defer t.Stop()
	}
	ws := <-wait
	exited.Store(true)
	s.drain(drained, pid, eio)
	return exitStatus(ws, timedOut.Load()), inputDone
}

// drain waits for the output pumps to end, after the process exited: at
// once unless a background child still holds an output open, in which case
// they are stopped after the grace period.
func (s *server) drain(drained <-chan struct{}, pid int, eio *execIO) {
	left := len(eio.outs)
	grace := time.NewTimer(s.cfg.OutputGrace)
	defer grace.Stop()
	for left > 0 {
		select {
		case <-drained:
			left--
		case <-grace.C:
			s.log.Debug("output still open after exit; dropping it", "pid", pid)
			eio.closeOutputs()
		}
	}
}

// hostInput applies the host's frames to the process until the stream's
// read side ends.
func (s *server) hostInput(c *agentproto.Conn, pid int, eio *execIO) {
	var buf []byte // grown to the largest frame: most execs get none
	for {
		t, p, err := c.ReadFrame(buf)
		if err != nil {
			return
		}
		if cap(p) > cap(buf) {
			buf = p[:cap(p)]
		}
		switch t {
		case agentproto.FrameStdin:
			eio.writeStdin(p)
		case agentproto.FrameStdinClose:
			eio.closeStdin()
		case agentproto.FrameSignal:
			var sig agentproto.Signal
			if err := jsonUnmarshal(p, &sig); err != nil || sig.Signal <= 0 || sig.Signal > 64 {
				s.log.Debug("ignoring bad signal frame", "pid", pid, "payload", string(p))
				continue
			}
			killGroup(pid, unix.Signal(sig.Signal))
		case agentproto.FrameResize:
			var r agentproto.Resize
			if err := jsonUnmarshal(p, &r); err == nil {
				eio.resize(r.Rows, r.Cols)
			}
		}
	}
}

// Output read buffer sizes: small for the many commands that print little,
// doubled on every full read up to big frames (fewer channel writes) for
// those that print a lot, whose pipe then grows too. Allocating (zeroing)
// 256 KiB and a system call to grow the pipe for each stream of every exec
// cost milliseconds of guest CPU under emulation.
const (
	minOutputBuf = 4 << 10
	growPipeAt   = 64 << 10 // the buffer size from which the pipe is grown
	maxOutputBuf = 256 << 10
)

// pumpOutput copies r to the stream as frames of type t, in bounded chunks;
// a full yamux window blocks it and so, through the pipe, the process.
func pumpOutput(r *os.File, t agentproto.FrameType, c *agentproto.Conn) {
	buf := make([]byte, minOutputBuf)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if werr := c.WriteFrame(t, buf[:n]); werr != nil {
				r.Close() // the host is gone: let the writer get EPIPE
				return
			}
			if n == len(buf) && len(buf) < maxOutputBuf {
				buf = make([]byte, 2*len(buf))
				if len(buf) == growPipeAt {
					growPipe(r)
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// killGroup signals a process group; a group that no longer exists is not
// an error.
func killGroup(pgid int, sig unix.Signal) error {
	err := unix.Kill(-pgid, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// notRunnable reports a command that could not run as a shell would: exit
// code 127 (not found) or 126 (not executable) and a message on stderr.
func notRunnable(c *agentproto.Conn, req *agentproto.ExecRequest, code int, msg string) {
	if req.ReportPID {
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
	}
	c.WriteFrame(agentproto.FrameStderr, []byte(msg+"\n"))
	c.WriteJSON(agentproto.FrameExit, agentproto.ExitStatus{Code: code})
}

// execFailure maps an exec error to a shell's exit code and message.
func execFailure(name string, err error) (int, string, bool) {
	switch {
	case errors.Is(err, unix.ENOENT):
		return 127, name + ": No such file or directory", true
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return 126, name + ": Permission denied", true
	case errors.Is(err, unix.ENOEXEC):
		return 126, name + ": cannot execute binary file: Exec format error", true
	}
	return 0, "", false
}

// exitStatus converts a wait status.
func exitStatus(ws unix.WaitStatus, timedOut bool) agentproto.ExitStatus {
	st := agentproto.ExitStatus{TimedOut: timedOut}
	switch {
	case ws.Signaled():
		st.Code = 128 + int(ws.Signal())
		st.Signal = unix.SignalName(ws.Signal())
	default:
		st.Code = ws.ExitStatus()
	}
	return st
}
