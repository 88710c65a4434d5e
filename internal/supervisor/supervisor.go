package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/vmm"
)

// Options configure one supervisor run.
type Options struct {
	Store   *store.Store
	ID      string
	Ready   io.WriteCloser                    // told "ok" or "error: …" once the VM is up or has failed; may be nil
	Backend func(p Plan) (vmm.Backend, error) // the backend p.Backend names, set up as p asks
	Logger  *slog.Logger
}

// supervisor owns one VM's VMM process and agent session.
type supervisor struct {
	opts    Options
	log     *slog.Logger
	vm      store.VM
	plan    Plan
	inst    vmm.Instance
	session *yamux.Session
	chanW   *agentproto.JoinWriter // the session's connection
	spare   chan *yamux.Stream     // a stream opened ahead for the next client (spare.go)
	status  Status
	net     *netState // set by setupNet

	ctlMu    sync.Mutex // serialises pause, resume and snapshot (snapshot.go)
	stopOnce sync.Once
	stopping chan struct{} // closed when a stop has been asked for
	exited   chan struct{} // closed when the VMM has exited and the row is final
}

// Run supervises the VM until its VMM exits. It marks the VM running once
// the guest agent has said hello, and stopped or error at the end; its
// sockets are gone when it returns.
func Run(ctx context.Context, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &supervisor{opts: opts, log: log.With("vm", opts.ID),
		spare: make(chan *yamux.Stream, 1), stopping: make(chan struct{}), exited: make(chan struct{})}
	ln, err := s.launch(ctx)
	if err != nil {
		s.fail(err)
		return err
	}
	defer s.startSSH(ctx)() // sshfwd.go; listening before "ok"
	s.ready("ok")
	s.openSpare()
	go s.serve(ln)
	go s.watchSignals()
	<-s.inst.Done()
	s.finish()
	ln.Close()
	return nil
}

// launch starts the VMM, waits for the agent's hello and marks the VM
// running. On error it leaves no VMM process and no socket behind.
func (s *supervisor) launch(ctx context.Context) (_ net.Listener, err error) {
	st := s.opts.Store
	if s.vm, err = st.GetVM(ctx, s.opts.ID); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(s.vm.Spec, &s.plan); err != nil {
		return nil, fmt.Errorf("decoding launch plan: %w", err)
	}
	backend, err := s.opts.Backend(s.plan)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(s.vm.Dir, ControlSocket)
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", sock, err)
	}
	defer func() {
		if err != nil {
			ln.Close()
		}
	}()
	if err := s.setupNet(ctx); err != nil {
		return nil, fmt.Errorf("setting up network: %w", err)
	}
	defer func() {
		if err != nil {
			s.teardownNet()
		}
	}()
	s.log.Info("launching", "backend", backend.Name(), "cmdline", s.plan.VMM.Cmdline)
	if s.inst, err = s.startVMM(ctx, backend); err != nil {
		return nil, fmt.Errorf("launching %s: %w", backend.Name(), err)
	}
	defer func() {
		if err != nil {
			s.inst.Kill()
			<-s.inst.Done()
		}
	}()
	hello, err := s.connectAgent(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.sendRestored(ctx); errors.Is(err, errRestoreTransport) {
		// The fresh session died under the restored op (seen once in CI,
		// under load): connect again — the op is idempotent — and retry once.
		s.log.Warn("restored op lost its session; reconnecting", "err", err)
		s.session.Close()
		if hello, err = s.connectAgent(ctx); err != nil {
			return nil, err
		}
		if err := s.sendRestored(ctx); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	s.status = Status{ID: s.vm.ID, Backend: backend.Name(), Accel: s.inst.Accel(),
		SupervisorPID: os.Getpid(), VMMPID: s.inst.PID(), Kernel: hello.Kernel,
		GuestBootMs: hello.BootMillis, GuestReadyMs: hello.ReadyMs}
	_, err = st.UpdateVM(ctx, s.vm.ID, func(v *store.VM) error {
		v.Status = store.StatusRunning
		v.Backend = backend.Name()
		v.SupervisorPID = os.Getpid()
		v.VMMPID = s.inst.PID()
		v.Error = ""
		v.StartedAt = time.Now()
		return nil
	})
	s.log.Info("running", "vmm_pid", s.inst.PID(), "guest_ready_ms", hello.ReadyMs)
	return ln, err
}

// connectAgent dials the agent channel, waits for the hello line (or the VMM's
// death, or the boot timeout) and starts the yamux session over it.
func (s *supervisor) connectAgent(ctx context.Context) (agentproto.Hello, error) {
	timeout := s.plan.BootTimeout
	if timeout <= 0 {
		timeout = DefaultBootTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := s.inst.DialAgent(ctx)
	if err != nil {
		return agentproto.Hello{}, fmt.Errorf("connecting to the agent: %w", err)
	}
	s.resync(conn)
	type result struct {
		hello agentproto.Hello
		err   error
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	done := make(chan result, 1)
	go func() {
		h, err := agentproto.ReadHello(br)
		done <- result{h, err}
	}()
	var r result
	select {
	case r = <-done:
		if r.err != nil {
			// The channel closed: usually the guest died. Say so, with its
			// console, rather than "EOF".
			select {
			case <-s.inst.Done():
				r.err = fmt.Errorf("the VMM exited during boot (%v)%s", s.inst.Err(), s.consoleHint())
			case <-time.After(2 * time.Second):
			}
		}
	case <-s.inst.Done():
		r.err = fmt.Errorf("the VMM exited during boot (%v)%s", s.inst.Err(), s.consoleHint())
	case <-ctx.Done():
		r.err = fmt.Errorf("the guest agent did not answer within %s%s", timeout, s.consoleHint())
	}
	if r.err != nil {
		conn.Close()
		return r.hello, r.err
	}
	s.chanW = agentproto.JoinWrites(bufferedConn{br, conn}, agentproto.UpdateHold)
	s.session, err = yamux.Client(s.chanW, agentproto.YamuxConfig())
	return r.hello, err
}

// consoleHint names the console log and quotes its telling line, for
// errors: the first kernel panic or agent failure, else the last line.
func (s *supervisor) consoleHint() string {
	path := s.plan.VMM.ConsoleLog
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	pick := strings.TrimSpace(lines[len(lines)-1])
	for i, l := range lines {
		if strings.Contains(l, "Kernel panic") || strings.Contains(l, "smolvm-agent: fatal") {
			pick = strings.TrimSpace(l)
			if i > 0 && strings.Contains(lines[i-1], "init") {
				pick = strings.TrimSpace(lines[i-1]) + " / " + pick
			}
			break
		}
	}
	if len(pick) > 200 {
		pick = pick[:200]
	}
	return fmt.Sprintf("; console %s: %q", path, pick)
}

// fail records a failed start: the row goes to error, the starter is told.
func (s *supervisor) fail(err error) {
	s.log.Error("start failed", "err", err)
	ctx := context.WithoutCancel(context.Background())
	s.opts.Store.UpdateVM(ctx, s.opts.ID, func(v *store.VM) error {
		v.Status = store.StatusError
		v.Error = err.Error()
		v.SupervisorPID, v.VMMPID = 0, 0
		return nil
	})
	os.Remove(filepath.Join(s.vm.Dir, ControlSocket))
	s.ready("error: " + strings.ReplaceAll(err.Error(), "\n", " "))
}

func (s *supervisor) ready(msg string) {
	if s.opts.Ready == nil {
		return
	}
	io.WriteString(s.opts.Ready, msg+"\n")
	s.opts.Ready.Close()
	s.opts.Ready = nil
}

// finish records how the VMM ended: stopped when a stop was asked for,
// error otherwise, and removes the run files.
func (s *supervisor) finish() {
	ctx := context.WithoutCancel(context.Background())
	s.teardownNet() // before the row is final: a delete that follows finds nothing left
	if s.session != nil {
		s.session.Close()
	}
	asked := false
	select {
	case <-s.stopping:
		asked = true
	default:
	}
	_, err := s.opts.Store.UpdateVM(ctx, s.opts.ID, func(v *store.VM) error {
		v.SupervisorPID, v.VMMPID = 0, 0
		if asked {
			v.Status, v.Error = store.StatusStopped, ""
			return nil
		}
		v.Status = store.StatusError
		v.Error = fmt.Sprintf("the VMM exited unexpectedly (%v)%s", s.inst.Err(), s.consoleHint())
		return nil
	})
	if err != nil {
		s.log.Error("recording exit", "err", err)
	}
	for _, name := range []string{ControlSocket} {
		os.Remove(filepath.Join(s.vm.Dir, name))
	}
	s.log.Info("exited", "asked", asked, "vmm_err", s.inst.Err())
	close(s.exited)
}

// watchSignals turns SIGTERM and SIGINT into a graceful stop.
func (s *supervisor) watchSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	s.stop(false)
}

// stop stops the guest: a graceful power-off through the agent with a
// deadline, then the VMM's own shutdown, then SIGKILL. force skips to SIGKILL.
func (s *supervisor) stop(force bool) {
	s.stopOnce.Do(func() {
		close(s.stopping)
		go s.escalate(force)
	})
}

func (s *supervisor) escalate(force bool) {
	if !force {
		if err := s.powerOff(); err != nil {
			s.log.Warn("graceful power-off", "err", err)
		}
		select {
		case <-s.inst.Done():
			return
		case <-time.After(10 * time.Second):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := s.inst.Shutdown(ctx)
		cancel()
		if err == nil {
			return
		}
	} else {
		// The guest is being thrown away: its network goes while the VMM
		// exits (removing the tap waits ~20 ms for the kernel's RCU), not
		// after. finish waits for it either way.
		go s.teardownNet()
	}
	s.inst.Kill()
}

// powerOff asks the agent to sync and power the guest off.
func (s *supervisor) powerOff() error {
	stream, err := s.session.OpenStream()
	if err != nil {
		return err
	}
	defer stream.Close()
	stream.SetDeadline(time.Now().Add(5 * time.Second))
	c := agentproto.NewConn(stream)
	if err := c.WriteJSON(agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpPowerOff}); err != nil {
		return err
	}
	var resp agentproto.Response
	return c.ReadJSON(agentproto.FrameResponse, &resp)
}

// serve answers control connections until the listener closes.
func (s *supervisor) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("accept", "err", err)
			}
			return
		}
		go s.handle(c)
	}
}

func (s *supervisor) handle(c net.Conn) {
	br := bufio.NewReader(c)
	var req request
	if err := readLine(br, &req); err != nil {
		c.Close()
		return
	}
	switch req.Op {
	case opAgent:
		s.proxyAgent(c, br)
	case opStop:
		s.stop(req.Force)
		<-s.exited
		writeLine(c, reply{OK: true})
		c.Close()
	case opPortExpose, opPortClose, opNetStatus, opSetEgress:
		s.handleNet(c, req)
	case opPause, opResume, opSnapshot:
		s.handleSnapshot(c, req)
	case opStatus:
		st := s.status
		writeLine(c, reply{OK: true, Status: &st})
		c.Close()
	default:
		writeLine(c, reply{Error: fmt.Sprintf("unknown operation %q", req.Op)})
		c.Close()
	}
}

// proxyAgent joins a client connection to a stream to the agent: the
// spare one when it is ready (spare.go), else a new one.
func (s *supervisor) proxyAgent(c net.Conn, br *bufio.Reader) {
	defer s.openSpare() // last, once this client is done
	defer c.Close()
	stream, err := s.agentStream()
	if err != nil {
		writeLine(c, reply{Error: "opening agent stream: " + err.Error()})
		return
	}
	defer stream.Close()
	if err := writeLine(c, reply{OK: true}); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(stream, br)
		stream.Close()
		done <- struct{}{}
	}()
	go func() {
		io.Copy(c, stream)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		// The agent is done with the stream: a copy towards it that is
		// blocked on a full window (input it will never read) must end.
		stream.Close()
		done <- struct{}{}
	}()
	<-done
	<-done
}

// bufferedConn reads through a bufio.Reader that may hold bytes read ahead.
type bufferedConn struct {
	r *bufio.Reader
	net.Conn
}

func (b bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
