package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// testAgent is an agent served over a socketpair, and the host's session.
type testAgent struct {
	sess     *yamux.Session
	hello    agentproto.Hello
	poweroff chan struct{}
	served   chan error
	hostConn net.Conn
}

// socketPair returns two connected stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprint("socketpair", i))
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

func startAgent(t *testing.T, mutate ...func(*Config)) *testAgent {
	t.Helper()
	guest, host := socketPair(t)
	ta := &testAgent{poweroff: make(chan struct{}, 1), served: make(chan error, 1), hostConn: host}
	cfg := Config{
		Hello:       agentproto.Hello{Version: agentproto.Version, Hostname: "t1", Kernel: "test"},
		Root:        "testdata/root",
		Hostname:    "t1",
		PowerOff:    func() { ta.poweroff <- struct{}{} },
		OutputGrace: 300 * time.Millisecond,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { ta.served <- Serve(ctx, guest, cfg) }()
	br := bufio.NewReader(host)
	h, err := agentproto.ReadHello(br)
	if err != nil {
		t.Fatal(err)
	}
	ta.hello = h
	ta.sess = newClientSession(t, br, host)
	sess := ta.sess
	t.Cleanup(func() {
		sess.Close()
		cancel()
		<-ta.served
		guest.Close()
	})
	return ta
}

// newClientSession starts the host's yamux client over r (which holds any
// bytes read ahead of the hello) and w.
func newClientSession(t testing.TB, r io.Reader, w io.WriteCloser) *yamux.Session {
	t.Helper()
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = io.Discard
	sess, err := yamux.Client(struct {
		io.Reader
		io.WriteCloser
	}{r, w}, ycfg)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// execResult is what the host saw of one exec.
type execResult struct {
	PID            int
	Stdout, Stderr string
	Exit           agentproto.ExitStatus
	Err            error // a FrameError, or a transport error
}

// request opens a stream and sends one request.
func (ta *testAgent) request(t testing.TB, req agentproto.Request) *agentproto.Conn {
	t.Helper()
	st, err := ta.sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	c := agentproto.NewConn(st)
	if err := c.WriteJSON(agentproto.FrameRequest, req); err != nil {
		t.Fatal(err)
	}
	return c
}

// exec runs req, asking for the pid, feeding stdin (when not nil) and
// calling during() after the process started; it collects the whole result.
func (ta *testAgent) exec(t testing.TB, req agentproto.ExecRequest, stdin []byte, during func(c *agentproto.Conn, pid int)) execResult {
	t.Helper()
	if stdin != nil {
		req.Stdin = true
	}
	req.ReportPID = true // its tests look at the process by pid
	c := ta.request(t, agentproto.Request{Op: agentproto.OpExec, Exec: &req})
	defer c.Close()
	var res execResult
	var resp agentproto.Response
	if err := c.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
		res.Err = err
		return res
	}
	res.PID = resp.PID
	if stdin != nil {
		c.WriteFrame(agentproto.FrameStdin, stdin)
		c.WriteFrame(agentproto.FrameStdinClose, nil)
	}
	if during != nil {
		during(c, resp.PID)
	}
	var out, errb strings.Builder
	for {
		ft, p, err := c.ReadFrame(nil)
		if err != nil {
			res.Err = fmt.Errorf("reading frames: %w", err)
			return res
		}
		switch ft {
		case agentproto.FrameStdout:
			out.Write(p)
		case agentproto.FrameStderr:
			errb.Write(p)
		case agentproto.FrameExit:
			res.Stdout, res.Stderr = out.String(), errb.String()
			if err := jsonUnmarshal(p, &res.Exit); err != nil {
				res.Err = err
			}
			return res
		default:
			res.Err = fmt.Errorf("unexpected frame %q", ft)
			return res
		}
	}
}

func TestHello(t *testing.T) {
	ta := startAgent(t)
	if ta.hello.Version != agentproto.Version || ta.hello.Hostname != "t1" {
		t.Errorf("hello = %+v", ta.hello)
	}
}

func TestSimpleOps(t *testing.T) {
	ta := startAgent(t)
	tests := []struct {
		op     string
		errHas string
	}{
		{agentproto.OpPing, ""},
		{agentproto.OpSync, ""},
		{"frobnicate", `unknown op "frobnicate"`},
		{agentproto.OpExec, "without exec field"},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			c := ta.request(t, agentproto.Request{Op: tt.op})
			defer c.Close()
			var resp agentproto.Response
			err := c.ReadJSON(agentproto.FrameResponse, &resp)
			if tt.errHas == "" && err != nil {
				t.Fatalf("%s: %v", tt.op, err)
			}
			var ge *agentproto.Error
			if tt.errHas != "" && (!errors.As(err, &ge) || !strings.Contains(ge.Message, tt.errHas)) {
				t.Fatalf("%s: err = %v, want a guest error containing %q", tt.op, err, tt.errHas)
			}
		})
	}
}

func TestPowerOff(t *testing.T) {
	ta := startAgent(t)
	c := ta.request(t, agentproto.Request{Op: agentproto.OpPowerOff})
	var resp agentproto.Response
	if err := c.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
		t.Fatal(err)
	}
	<-ta.poweroff

	refusing := startAgent(t, func(c *Config) { c.PowerOff = nil })
	c = refusing.request(t, agentproto.Request{Op: agentproto.OpPowerOff})
	var ge *agentproto.Error
	if err := c.ReadJSON(agentproto.FrameResponse, &resp); !errors.As(err, &ge) {
		t.Fatalf("poweroff without a PowerOff func: err = %v, want a guest error", err)
	}
}

func TestServeReturnsWhenConnEnds(t *testing.T) {
	ta := startAgent(t)
	ta.hostConn.Close()
	if err := <-ta.served; err != nil {
		t.Fatalf("Serve = %v, want nil after the host hung up", err)
	}
	ta.served <- nil // for the cleanup
}

func TestExec(t *testing.T) {
	ta := startAgent(t)
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		req        agentproto.ExecRequest
		stdin      string
		stdout     string
		stderr     string
		code       int
		signal     string
		errHas     string // a FrameError instead of a run
		needRoot   bool
		stdoutHas  string
		noStdinArg bool
	}{
		{name: "echo", req: agentproto.ExecRequest{Argv: []string{"echo", "hi"}}, stdout: "hi\n"},
		{name: "stderr apart", req: agentproto.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2"}}, stdout: "out\n", stderr: "err\n"},
		{name: "exit code", req: agentproto.ExecRequest{Argv: []string{"sh", "-c", "exit 3"}}, code: 3},
		{name: "killed by signal", req: agentproto.ExecRequest{Argv: []string{"sh", "-c", "kill -9 $$"}}, code: 137, signal: "SIGKILL"},
		{name: "stdin", req: agentproto.ExecRequest{Argv: []string{"tr", "a-z", "A-Z"}}, stdin: "hello\n", stdout: "HELLO\n"},
		{name: "no stdin is /dev/null", req: agentproto.ExecRequest{Argv: []string{"cat"}}, stdout: ""},
		{name: "command not found", req: agentproto.ExecRequest{Argv: []string{"no-such-cmd-xyz"}}, code: 127, stderr: "no-such-cmd-xyz: command not found\n"},
		{name: "missing path", req: agentproto.ExecRequest{Argv: []string{"/nonexistent/tool"}}, code: 127, stderr: "/nonexistent/tool: No such file or directory\n"},
		{name: "permission denied", req: agentproto.ExecRequest{Argv: []string{noexec}}, code: 126, stderr: noexec + ": Permission denied\n"},
		{name: "env and dir", req: agentproto.ExecRequest{Argv: []string{"sh", "-c", `echo "$FOO $HOME"; pwd`}, Env: []string{"FOO=bar", "HOME=/h"}, Dir: dir}, stdout: "bar /h\n" + dir + "\n"},
		{name: "default env", req: agentproto.ExecRequest{Argv: []string{"sh", "-c", `echo "$PATH|$HOME|$HOSTNAME|${TERM-unset}"; pwd`}}, stdout: defaultPath + "|/root|t1|unset\n/\n"},
		{name: "user by name", needRoot: true, req: agentproto.ExecRequest{Argv: []string{"sh", "-c", `id -u; id -g; id -G; echo $HOME $USER`}, User: "alice"}, stdout: "1500\n1500\n1500 2000\n/home/alice alice\n"},
		{name: "user by uid:gid", needRoot: true, req: agentproto.ExecRequest{Argv: []string{"sh", "-c", `id -u; id -g`}, User: "4321:2001"}, stdout: "4321\n2001\n"},
		{name: "user:group names", needRoot: true, req: agentproto.ExecRequest{Argv: []string{"id", "-g"}, User: "alice:ops"}, stdout: "2001\n"},
		{name: "unknown user", req: agentproto.ExecRequest{Argv: []string{"true"}, User: "mallory"}, errHas: `user "mallory" not found`},
		{name: "unknown group", req: agentproto.ExecRequest{Argv: []string{"true"}, User: "alice:nogroup"}, errHas: `group "nogroup" not found`},
		{name: "empty argv", req: agentproto.ExecRequest{}, errHas: "empty command"},
		{name: "relative dir", req: agentproto.ExecRequest{Argv: []string{"true"}, Dir: "tmp"}, errHas: "not absolute"},
		{name: "missing dir", req: agentproto.ExecRequest{Argv: []string{"true"}, Dir: "/nonexistent"}, errHas: "does not exist"},
		{name: "dir not a directory", req: agentproto.ExecRequest{Argv: []string{"true"}, Dir: "/dev/null"}, errHas: "not a directory"},
		{name: "missing dir and command", req: agentproto.ExecRequest{Argv: []string{"no-such-command-here"}, Dir: "/nonexistent"}, errHas: "does not exist"},
		{name: "bad env", req: agentproto.ExecRequest{Argv: []string{"true"}, Env: []string{"NOEQUALS"}}, errHas: "not KEY=VALUE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needRoot && os.Getuid() != 0 {
				t.Skip("switching users needs root")
			}
			var stdin []byte
			if tt.stdin != "" {
				stdin = []byte(tt.stdin)
			}
			res := ta.exec(t, tt.req, stdin, nil)
			if tt.errHas != "" {
				var ge *agentproto.Error
				if !errors.As(res.Err, &ge) || !strings.Contains(ge.Message, tt.errHas) {
					t.Fatalf("err = %v, want a guest error containing %q", res.Err, tt.errHas)
				}
				return
			}
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			if res.Stdout != tt.stdout || res.Stderr != tt.stderr || res.Exit.Code != tt.code || res.Exit.Signal != tt.signal || res.Exit.TimedOut {
				t.Errorf("got stdout %q stderr %q exit %+v\nwant stdout %q stderr %q code %d signal %q",
					res.Stdout, res.Stderr, res.Exit, tt.stdout, tt.stderr, tt.code, tt.signal)
			}
		})
	}
}

// waitGroupGone waits until no process is left in process group pgid.
func waitGroupGone(t *testing.T, pgid int) {
	t.Helper()
	for range 500 {
		if err := unix.Kill(-pgid, 0); errors.Is(err, unix.ESRCH) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	unix.Kill(-pgid, unix.SIGKILL)
	t.Errorf("process group %d still has members", pgid)
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	ta := startAgent(t)
	res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"sh", "-c", "sleep 100 & sleep 100"}, TimeoutMs: 200}, nil, nil)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if !res.Exit.TimedOut || res.Exit.Code != 137 || res.Exit.Signal != "SIGKILL" {
		t.Errorf("exit = %+v, want timed out by SIGKILL", res.Exit)
	}
	waitGroupGone(t, res.PID)
}

func TestExecSignal(t *testing.T) {
	ta := startAgent(t)
	res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"sleep", "100"}}, nil, func(c *agentproto.Conn, pid int) {
		c.WriteJSON(agentproto.FrameSignal, agentproto.Signal{Signal: int(unix.SIGTERM)})
	})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if res.Exit.Code != 143 || res.Exit.Signal != "SIGTERM" || res.Exit.TimedOut {
		t.Errorf("exit = %+v, want killed by SIGTERM", res.Exit)
	}
}

func TestExecBackgroundChildKeepsStdout(t *testing.T) {
	ta := startAgent(t)
	// The background sleep inherits stdout; the exec must still end, once
	// the grace period after the shell's exit has passed.
	res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"sh", "-c", "sleep 100 & echo started"}}, nil, nil)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if res.Stdout != "started\n" || res.Exit.Code != 0 {
		t.Errorf("got %q, exit %+v", res.Stdout, res.Exit)
	}
	// The background child is not the exec's business: it is still there.
	if err := unix.Kill(-res.PID, 0); err != nil {
		t.Errorf("background child gone too early: %v", err)
	}
	killGroup(res.PID, unix.SIGKILL)
	waitGroupGone(t, res.PID)
}

func TestExecConcurrent(t *testing.T) {
	ta := startAgent(t)
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("echo %d; echo e%d >&2; exit %d", i, i, i%5)}}, nil, nil)
			if res.Err != nil || res.Stdout != fmt.Sprintf("%d\n", i) || res.Stderr != fmt.Sprintf("e%d\n", i) || res.Exit.Code != i%5 {
				errs <- fmt.Errorf("exec %d: %+v", i, res)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestExecFloodIsFlowControlled(t *testing.T) {
	ta := startAgent(t)
	const total = 400 << 20
	req := agentproto.ExecRequest{Argv: []string{"head", "-c", fmt.Sprint(total), "/dev/zero"}, ReportPID: true}
	c := ta.request(t, agentproto.Request{Op: agentproto.OpExec, Exec: &req})
	defer c.Close()
	var resp agentproto.Response
	if err := c.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
		t.Fatal(err)
	}
	// Stop reading for a while: without flow control the agent would
	// buffer the process's output at hundreds of MB a second.
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	time.Sleep(time.Second)
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 32<<20 {
		t.Errorf("heap grew by %d MiB while the host was not reading", grew>>20)
	}
	var got int64
	buf := make([]byte, agentproto.MaxFrame)
	for {
		ft, p, err := c.ReadFrame(buf)
		if err != nil {
			t.Fatal(err)
		}
		if ft == agentproto.FrameStdout {
			got += int64(len(p))
			continue
		}
		if ft != agentproto.FrameExit {
			t.Fatalf("unexpected frame %q", ft)
		}
		var st agentproto.ExitStatus
		jsonUnmarshal(p, &st)
		if st.Code != 0 || got != total {
			t.Errorf("exit %+v after %d bytes, want 0 after %d", st, got, total)
		}
		return
	}
}

func TestExecTTY(t *testing.T) {
	ta := startAgent(t)
	res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"sh", "-c", `tty; stty size; echo "$TERM"; read x; echo "got $x"`}, TTY: true, Stdin: true, Rows: 30, Cols: 100},
		nil, func(c *agentproto.Conn, pid int) {
			c.WriteFrame(agentproto.FrameStdin, []byte("typed\n"))
		})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	// A terminal turns \n into \r\n and echoes what was typed.
	out := strings.ReplaceAll(res.Stdout, "\r\n", "\n")
	for _, want := range []string{"/dev/pts/", "30 100\n", "xterm-256color\n", "got typed\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("tty output %q lacks %q", out, want)
		}
	}
	if res.Exit.Code != 0 {
		t.Errorf("exit %+v", res.Exit)
	}
}

// TestExecLeavesNoFDs: whatever an exec ends in, the agent holds no more
// descriptors afterwards than before (the ready set of standard streams
// for the next exec included), and none once its session ends.
func TestExecLeavesNoFDs(t *testing.T) {
	openFDs := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	// settled waits for handlers finishing behind their answers.
	settled := func(want int) int {
		n := openFDs()
		for deadline := time.Now().Add(10 * time.Second); n != want && time.Now().Before(deadline); n = openFDs() {
			time.Sleep(10 * time.Millisecond)
		}
		return n
	}
	ta := startAgent(t)
	ta.exec(t, agentproto.ExecRequest{Argv: []string{"true"}}, nil, nil)
	base := openFDs()
	for prev := -1; base != prev; base = openFDs() { // the first exec's handler winds down
		prev = base
		time.Sleep(50 * time.Millisecond)
	}
	reqs := []struct {
		req   agentproto.ExecRequest
		stdin []byte
	}{
		{req: agentproto.ExecRequest{Argv: []string{"true"}}},
		{req: agentproto.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}},
		{req: agentproto.ExecRequest{Argv: []string{"cat"}}, stdin: []byte("in\n")},
		{req: agentproto.ExecRequest{Argv: []string{"no-such-cmd-xyz"}}},
		{req: agentproto.ExecRequest{Argv: []string{"/nonexistent/tool"}}},
		{req: agentproto.ExecRequest{Argv: []string{"true"}, Dir: "/nonexistent"}},
		{req: agentproto.ExecRequest{Argv: []string{"true"}, TTY: true}},
	}
	for i := 0; i < 3; i++ {
		for _, r := range reqs {
			ta.exec(t, r.req, r.stdin, nil)
		}
	}
	if n := settled(base); n != base {
		t.Fatalf("%d fds open after the execs, %d before", n, base)
	}
	ta.sess.Close()
	if err := <-ta.served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	ta.served <- nil // for the cleanup
	if n := openFDs(); n > base-5 {
		t.Fatalf("%d fds open after the session ended, %d during it: the ready streams (5 fds) were kept", n, base)
	}
}
