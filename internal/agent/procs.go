package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// Output buffer bounds of background processes, per stream.
const (
	defaultProcBuffer = 1 << 20
	maxProcBuffer     = 64 << 20
)

// proc is a background process: it runs with stdin /dev/null, its output
// going into two rings, owned by the agent rather than by any stream.
type proc struct {
	id      string
	pid     int
	argv    []string
	user    string
	started time.Time
	out     *ring
	err     *ring
	done    chan struct{} // closed once exited (exit and exited are then set)
	exit    agentproto.ExitStatus
	exited  time.Time
}

func (p *proc) info() agentproto.ProcInfo {
	pi := agentproto.ProcInfo{ID: p.id, PID: p.pid, Argv: p.argv, User: p.user, Started: p.started,
		OutBytes: p.out.written(), ErrBytes: p.err.written(), Running: true}
	select {
	case <-p.done:
		st := p.exit
		pi.Running, pi.Exit, pi.Exited = false, &st, p.exited
	default:
	}
	return pi
}

// handleProc serves the background-process ops; false for an op it does
// not know.
func (s *server) handleProc(ctx context.Context, st net.Conn, c *agentproto.Conn, req *agentproto.Request) bool {
	var err error
	switch req.Op {
	case agentproto.OpProcStart:
		err = s.procStart(c, req)
	case agentproto.OpProcList:
		err = s.procList(c)
	case agentproto.OpProcWait, agentproto.OpProcSignal, agentproto.OpProcOutput, agentproto.OpProcRemove:
		var p *proc
		if p, err = s.findProc(req.Proc); err == nil {
			err = s.procOp(ctx, st, c, req.Op, req.Proc, p)
		}
	default:
		return false
	}
	if err != nil {
		replyError(c, err)
	}
	return true
}

func (s *server) findProc(req *agentproto.ProcRequest) (*proc, error) {
	if req == nil {
		return nil, errors.New("request without proc field")
	}
	st := s.cfg.State
	st.mu.Lock()
	defer st.mu.Unlock()
	p, ok := st.procs[req.ID]
	if !ok {
		return nil, fmt.Errorf("no background process %q", req.ID)
	}
	return p, nil
}

func (s *server) procOp(ctx context.Context, st net.Conn, c *agentproto.Conn, op string, req *agentproto.ProcRequest, p *proc) error {
	switch op {
	case agentproto.OpProcWait:
		if !waitOrHangup(st, c, p.done) {
			return nil
		}
		pi := p.info()
		return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{Proc: &pi})
	case agentproto.OpProcSignal:
		if req.Signal <= 0 || req.Signal > 64 {
			return fmt.Errorf("signal %d: not a signal number", req.Signal)
		}
		select {
		case <-p.done:
			return fmt.Errorf("background process %s has exited", p.id)
		default:
		}
		if err := killGroup(p.pid, unix.Signal(req.Signal)); err != nil {
			return fmt.Errorf("signalling %s: %w", p.id, err)
		}
		return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
	case agentproto.OpProcOutput:
		return s.procOutput(ctx, st, c, req, p)
	default: // OpProcRemove
		killGroup(p.pid, unix.SIGKILL)
		if !waitOrHangup(st, c, p.done) {
			return nil
		}
		s.cfg.State.mu.Lock()
		delete(s.cfg.State.procs, p.id)
		s.cfg.State.mu.Unlock()
		return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
	}
}

// watchHangup reads (and drops) what the host sends on the stream until it
// ends: gone is closed then. stop ends the watch and waits for its reader.
func watchHangup(st net.Conn, c *agentproto.Conn) (gone <-chan struct{}, stop func()) {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for {
			if _, _, err := c.ReadFrame(nil); err != nil {
				return
			}
		}
	}()
	return ch, func() {
		st.SetReadDeadline(time.Now())
		<-ch
	}
}

// waitOrHangup waits until done is closed (true) or the host ends the
// stream (false).
func waitOrHangup(st net.Conn, c *agentproto.Conn, done <-chan struct{}) bool {
	gone, stop := watchHangup(st, c)
	defer stop()
	select {
	case <-done:
		return true
	case <-gone:
		return false
	}
}

// procStart starts a background process.
func (s *server) procStart(c *agentproto.Conn, req *agentproto.Request) error {
	if req.Exec == nil {
		return errors.New("proc-start request without exec field")
	}
	x := *req.Exec
	x.Stdin, x.TTY = false, false
	size := defaultProcBuffer
	if req.Proc != nil && req.Proc.BufferBytes > 0 {
		size = min(req.Proc.BufferBytes, maxProcBuffer)
	}
	spec, err := s.prepareExec(&x)
	if err != nil {
		return err
	}
	if spec.path == "" {
		return fmt.Errorf("%s: command not found", x.Argv[0])
	}
	eio, err := newExecIO(&x)
	if err != nil {
		return fmt.Errorf("proc-start: %w", err)
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
			return derr
		}
		return fmt.Errorf("starting %s: %w", x.Argv[0], err)
	}
	p := &proc{pid: pid, argv: x.Argv, user: x.User, started: time.Now(),
		out: newRing(size), err: newRing(size), done: make(chan struct{})}
	state := s.cfg.State
	state.mu.Lock()
	state.nextProc++
	p.id = "p" + strconv.Itoa(state.nextProc)
	state.procs[p.id] = p
	state.forgetOldExited(maxExitedProcs)
	state.mu.Unlock()
	go s.superviseProc(p, wait, eio, time.Duration(x.TimeoutMs)*time.Millisecond)
	s.log.Debug("background process started", "id", p.id, "pid", pid, "argv", x.Argv)
	pi := p.info()
	return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{PID: pid, Proc: &pi})
}

// maxExitedProcs bounds the exited background processes (and their
// output) the agent keeps; the oldest are forgotten first.
const maxExitedProcs = 64

// forgetOldExited drops the oldest exited processes beyond keep. st.mu
// must be held.
func (st *State) forgetOldExited(keep int) {
	var exited []*proc
	for _, p := range st.procs {
		select {
		case <-p.done:
			exited = append(exited, p)
		default:
		}
	}
	if len(exited) <= keep {
		return
	}
	slices.SortFunc(exited, func(a, b *proc) int { return a.exited.Compare(b.exited) })
	for _, p := range exited[:len(exited)-keep] {
		delete(st.procs, p.id)
	}
}

// superviseProc copies a background process's output into its rings and
// records its exit.
func (s *server) superviseProc(p *proc, wait <-chan unix.WaitStatus, eio *execIO, timeout time.Duration) {
	var pumps sync.WaitGroup
	for i, o := range eio.outs {
		r := []*ring{p.out, p.err}[i]
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := o.r.Read(buf)
				r.Write(buf[:n])
				if err != nil {
					return
				}
			}
		}()
	}
	timedOut := false
	var timer <-chan time.Time
	if timeout > 0 {
		timer = time.After(timeout)
	}
	var ws unix.WaitStatus
	select {
	case ws = <-wait:
	case <-timer:
		timedOut = true
		killGroup(p.pid, unix.SIGKILL)
		ws = <-wait
	}
	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(s.cfg.OutputGrace):
		eio.closeOutputs()
		<-drained
	}
	eio.closeAll()
	p.out.close()
	p.err.close()
	p.exit, p.exited = exitStatus(ws, timedOut), time.Now()
	close(p.done)
	s.log.Debug("background process exited", "id", p.id, "code", p.exit.Code)
}

func (s *server) procList(c *agentproto.Conn) error {
	st := s.cfg.State
	st.mu.Lock()
	procs := make([]*proc, 0, len(st.procs))
	for _, p := range st.procs {
		procs = append(procs, p)
	}
	st.mu.Unlock()
	slices.SortFunc(procs, func(a, b *proc) int { return a.started.Compare(b.started) })
	out := make([]agentproto.ProcInfo, 0, len(procs))
	for _, p := range procs {
		out = append(out, p.info())
	}
	return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{Procs: out})
}

// procOutput sends what the rings hold, then (Follow) new output until the
// process has exited and its output is drained, then FrameDone.
func (s *server) procOutput(ctx context.Context, st net.Conn, c *agentproto.Conn, req *agentproto.ProcRequest, p *proc) error {
	pi := p.info()
	if err := c.WriteJSON(agentproto.FrameResponse, agentproto.Response{Proc: &pi}); err != nil {
		return err
	}
	gone, stop := watchHangup(st, c)
	defer stop()
	streams := []struct {
		r     *ring
		frame agentproto.FrameType
		off   int64
		eof   bool
	}{{r: p.out, frame: agentproto.FrameStdout}, {r: p.err, frame: agentproto.FrameStderr}}
	buf := make([]byte, 256<<10)
	var dropped int64
	for {
		var waits []<-chan struct{}
		for i := range streams {
			x := &streams[i]
			for !x.eof {
				n, next, d, eof, more := x.r.readAt(x.off, buf)
				x.off, dropped = next, dropped+d
				if n > 0 {
					if err := c.WriteFrame(x.frame, buf[:n]); err != nil {
						return nil // the host is gone
					}
					continue
				}
				x.eof = eof
				if !eof {
					waits = append(waits, more)
				}
				break
			}
		}
		if !req.Follow || len(waits) == 0 {
			break
		}
		select {
		case <-waits[0]:
		case <-waits[len(waits)-1]:
		case <-gone:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return c.WriteJSON(agentproto.FrameDone, agentproto.Done{Bytes: streams[0].off + streams[1].off, Dropped: dropped})
}
