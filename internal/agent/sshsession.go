package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// sshSession is one SSH session channel: at most one program (shell,
// command or subsystem), with an optional PTY.
type sshSession struct {
	s       *server
	ch      ssh.Channel
	user    string
	env     []string // from the client's env requests
	baseEnv []string // image and VM config environment, from the host

	mu      sync.Mutex // guards the fields below
	tty     bool
	term    string
	rows    uint16
	cols    uint16
	eio     *execIO // the running program's I/O; nil before it starts
	pid     int
	started bool
}

// serve answers the channel's requests; when they end (the client closed
// the channel or went away) a program still running is hung up.
func (ss *sshSession) serve(reqs <-chan *ssh.Request) {
	var exited atomic.Bool
	for req := range reqs {
		ok := ss.request(req, &exited)
		if req.WantReply {
			req.Reply(ok, nil)
		}
	}
	ss.mu.Lock()
	pid, started := ss.pid, ss.started
	ss.mu.Unlock()
	if started && pid > 0 && !exited.Load() {
		ss.s.log.Debug("ssh client went away; hanging up", "pid", pid)
		killGroup(pid, unix.SIGHUP)
		time.AfterFunc(hangUpGrace, func() {
			if !exited.Load() {
				killGroup(pid, unix.SIGKILL)
			}
		})
	}
	ss.ch.Close()
}

func (ss *sshSession) request(req *ssh.Request, exited *atomic.Bool) bool {
	switch req.Type {
	case "pty-req":
		var p struct {
			Term          string
			Cols, Rows    uint32
			Width, Height uint32
			Modes         string
		}
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false
		}
		ss.mu.Lock()
		ss.tty, ss.term, ss.rows, ss.cols = true, p.Term, uint16(p.Rows), uint16(p.Cols)
		ss.mu.Unlock()
		return true
	case "window-change":
		var p struct{ Cols, Rows, Width, Height uint32 }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false
		}
		ss.mu.Lock()
		ss.rows, ss.cols = uint16(p.Rows), uint16(p.Cols)
		eio := ss.eio
		ss.mu.Unlock()
		if eio != nil {
			eio.resize(uint16(p.Rows), uint16(p.Cols))
		}
		return true
	case "env":
		var p struct{ Name, Value string }
		if ssh.Unmarshal(req.Payload, &p) != nil || !ValidEnvKey(p.Name) || strings.IndexByte(p.Value, 0) >= 0 {
			return false
		}
		ss.env = append(ss.env, p.Name+"="+p.Value)
		return true
	case "signal":
		var p struct{ Signal string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false
		}
		sig := unix.SignalNum("SIG" + p.Signal)
		ss.mu.Lock()
		pid := ss.pid
		ss.mu.Unlock()
		if sig == 0 || pid == 0 {
			return false
		}
		killGroup(pid, sig)
		return true
	case "shell":
		return ss.start(nil, exited)
	case "exec":
		var p struct{ Command string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false
		}
		return ss.start([]string{"-c", p.Command}, exited)
	case "subsystem":
		var p struct{ Name string }
		if ssh.Unmarshal(req.Payload, &p) != nil || p.Name != "sftp" {
			return false
		}
		return ss.startSFTP(exited)
	}
	return false
}

// start runs the user's shell: a login shell when args is nil, else the
// shell with args (`sh -c CMD`, as sshd does).
func (ss *sshSession) start(args []string, exited *atomic.Bool) bool {
	shell := userShell(ss.s.cfg.Root, ss.user)
	argv := append([]string{shell}, args...)
	if args == nil {
		argv = []string{"-" + filepath.Base(shell)}
	}
	return ss.run(shell, argv, exited)
}

// startSFTP serves the sftp subsystem: in the agent for root; for other
// users through the guest's own sftp-server, run as that user, when it
// has one (the agent runs as root and must not serve files as root to
// someone else).
func (ss *sshSession) startSFTP(exited *atomic.Bool) bool {
	u, err := lookupUser(ss.s.cfg.Root, ss.user)
	if err != nil {
		return false
	}
	if u.UID != 0 {
		for _, p := range []string{"/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server", "/usr/libexec/sftp-server", "/usr/libexec/openssh/sftp-server"} {
			if _, err := os.Stat(p); err == nil {
				return ss.run(p, []string{p}, exited)
			}
		}
		fmt.Fprintf(ss.ch.Stderr(), "smolvm: sftp as %s needs the guest's sftp-server (it is only built in for root)\n", ss.user)
		return false
	}
	ss.mu.Lock()
	if ss.started {
		ss.mu.Unlock()
		return false
	}
	ss.started = true
	ss.mu.Unlock()
	home := u.Home
	if home == "" {
		home = "/"
	}
	go func() {
		defer exited.Store(true)
		srv, err := sftp.NewServer(ss.ch, sftp.WithServerWorkingDirectory(home))
		if err == nil {
			err = srv.Serve() // the channel is closed below, after the exit status
		}
		code := uint32(0)
		if err != nil && !errors.Is(err, io.EOF) {
			ss.s.log.Debug("sftp session", "err", err)
			code = 1
		}
		ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{code}))
		ss.ch.Close()
	}()
	return true
}

// run starts the session's program and a goroutine that pumps its I/O
// and reports its exit.
func (ss *sshSession) run(path string, argv []string, exited *atomic.Bool) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.started {
		return false
	}
	env := append([]string{}, ss.env...)
	if ss.tty {
		env = append(env, "TERM="+ss.term)
	}
	req := &agentproto.ExecRequest{Argv: []string{path}, User: ss.user, Env: env, BaseEnv: ss.baseEnv,
		Stdin: true, TTY: ss.tty, Rows: ss.rows, Cols: ss.cols}
	spec, err := ss.s.prepareExec(req)
	if err == nil && spec.path == "" {
		err = fmt.Errorf("%s: not found", path)
	}
	if err == nil {
		spec.argv = argv
		if home := envGet(spec.env, "HOME"); home != "" {
			if fi, err := os.Stat(home); err == nil && fi.IsDir() {
				spec.dir = home
			}
		}
	}
	var eio *execIO
	if err == nil {
		eio, err = newExecIO(req)
	}
	var pid int
	var wait <-chan unix.WaitStatus
	if err == nil {
		pid, wait, err = ss.s.reaper.Start(func() (int, error) {
			return syscall.ForkExec(spec.path, spec.argv, &syscall.ProcAttr{
				Dir: spec.dir, Env: spec.env, Files: eio.childFds(), Sys: eio.sysProcAttr(spec.cred),
			})
		})
		eio.closeChild()
		if err != nil {
			eio.closeAll()
		}
	}
	if err != nil {
		fmt.Fprintf(ss.ch.Stderr(), "smolvm: %v\n", err)
		return false
	}
	ss.started, ss.pid, ss.eio = true, pid, eio
	go ss.pump(pid, wait, eio, exited)
	return true
}

// pump joins the program's I/O to the channel and, once it has exited
// and its output is drained, sends its exit status and closes the channel.
func (ss *sshSession) pump(pid int, wait <-chan unix.WaitStatus, eio *execIO, exited *atomic.Bool) {
	var outs sync.WaitGroup
	for _, o := range eio.outs {
		w := io.Writer(ss.ch)
		if o.frame == agentproto.FrameStderr {
			w = ss.ch.Stderr()
		}
		outs.Add(1)
		go func() {
			defer outs.Done()
			io.CopyBuffer(w, o.r, make([]byte, 32<<10))
		}()
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := ss.ch.Read(buf)
			if n > 0 {
				eio.writeStdin(buf[:n])
			}
			if err != nil {
				if err == io.EOF {
					eio.closeStdin()
				}
				return
			}
		}
	}()
	ws := <-wait
	exited.Store(true)
	drained := make(chan struct{})
	go func() { outs.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(ss.s.cfg.OutputGrace):
		eio.closeOutputs()
		<-drained
	}
	eio.closeAll()
	st := exitStatus(ws, false)
	if st.Signal != "" {
		ss.ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{strings.TrimPrefix(st.Signal, "SIG"), false, "", ""}))
	} else {
		ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(st.Code)}))
	}
	ss.ch.Close()
}

// userShell returns the login shell /etc/passwd gives the user (a name or
// uid; "" is root), when it exists; else /bin/bash or /bin/sh.
func userShell(root, user string) string {
	name, _, _ := strings.Cut(user, ":")
	if name == "" {
		name = "0"
	}
	var shell string
	if f, err := os.Open(filepath.Join(root, "etc/passwd")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Split(sc.Text(), ":")
			if len(fs) >= 7 && (fs[0] == name || fs[2] == name) {
				shell = fs[6]
				break
			}
		}
		f.Close()
	}
	for _, sh := range []string{shell, "/bin/bash", "/bin/sh"} {
		if sh == "" || strings.HasSuffix(sh, "/nologin") || strings.HasSuffix(sh, "/false") {
			continue
		}
		if fi, err := os.Stat(filepath.Join(root, sh)); err == nil && fi.Mode()&0o111 != 0 {
			return sh
		}
	}
	return "/bin/sh"
}
