package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// Config is what Serve needs from its surroundings.
type Config struct {
	// Hello is written on the connection before the session starts.
	Hello agentproto.Hello
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Reaper starts and waits for every child. Nil: Serve runs its own for
	// the pids it starts (not orphans) and stops it on return.
	Reaper *Reaper
	// Root is where /etc/passwd and /etc/group are read ("" means "/").
	Root string
	// Hostname goes into processes' HOSTNAME ("" means os.Hostname()).
	Hostname string
	// PowerOff is called after an OpPowerOff request has been answered; nil
	// refuses OpPowerOff. It may never return.
	PowerOff func()
	// OutputGrace is how long an exec waits, after its process exits, for
	// others holding its stdout/stderr (a background child) to close them
	// (0 means 500ms). Output written after that is dropped.
	OutputGrace time.Duration
	// State is kept across connections (environment, background
	// processes, SSH host key); nil: Serve makes one for this connection.
	State *State
}

// server is the state shared by one Serve call's streams.
type server struct {
	cfg    Config
	log    *slog.Logger
	reaper *Reaper
	users  userCache // exec's user lookups (usercache.go)
	stdio  stdioPool // a ready set of standard streams for the next exec
}

// Serve writes the hello line on conn, then serves a yamux server session
// over it until the connection ends (nil) or ctx is done (ctx.Err()). Each
// stream carries one request. Processes started over conn keep running
// after it ends.
func Serve(ctx context.Context, conn io.ReadWriteCloser, cfg Config) error {
	s := &server{cfg: cfg, log: cfg.Logger, reaper: cfg.Reaper}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.reaper == nil {
		s.reaper = NewReaper(false)
		defer s.reaper.Close()
	}
	if s.cfg.OutputGrace <= 0 {
		s.cfg.OutputGrace = 500 * time.Millisecond
	}
	if s.cfg.State == nil {
		s.cfg.State = NewState()
	}
	if s.cfg.Hostname == "" {
		s.cfg.Hostname, _ = os.Hostname()
	}
	if _, err := io.WriteString(conn, cfg.Hello.Line()); err != nil {
		return fmt.Errorf("writing hello: %w", err)
	}
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = io.Discard
	// Keepalives end a session whose host is gone without a hang-up the
	// guest could see (a quick reconnect on virtio-serial); the timeout is
	// generous because a host under software emulation can stall.
	ycfg.KeepAliveInterval = 5 * time.Second
	ycfg.ConnectionWriteTimeout = 15 * time.Second
	ycfg.MaxStreamWindowSize = 4 << 20 // uploads at the channel's speed, as the host's window does for output
	sess, err := yamux.Server(agentproto.JoinWrites(&syncStripper{rwc: conn}, agentproto.UpdateHold), ycfg)
	if err != nil {
		return fmt.Errorf("starting yamux session: %w", err)
	}
	defer sess.Close()
	defer s.stdio.close()
	go s.stdio.refill()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.log.Debug("session ended", "err", err)
			return nil
		}
		go s.handle(ctx, st)
	}
}

// SyncLine is what a host writes right after connecting to the agent
// channel, before reading the hello. virtio-serial cannot always tell the
// guest that its host hung up and came back (the two events can merge), so
// the agent may still hold the previous session: these bytes are not valid
// yamux, which ends that session, and the agent then writes a fresh hello.
// A fresh session drops the line when it comes first. (Hosts that skip it
// still work; a stale session then ends by keepalive within ~20 s.)
const SyncLine = "SMOLVM-SYNC\n"

// syncStripper passes a stream through, dropping SyncLine if the stream
// starts with it. yamux's first read is a 12-byte header, so reading
// len(SyncLine) bytes up front cannot wait for bytes a host never sends.
type syncStripper struct {
	rwc     io.ReadWriteCloser
	checked bool
	pending []byte
}

func (s *syncStripper) Read(p []byte) (int, error) {
	if !s.checked {
		s.checked = true
		head := make([]byte, len(SyncLine))
		n, err := io.ReadFull(s.rwc, head)
		if string(head[:n]) != SyncLine {
			s.pending = head[:n]
		}
		if err != nil && len(s.pending) == 0 {
			return 0, err
		}
	}
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	return s.rwc.Read(p)
}

func (s *syncStripper) Write(p []byte) (int, error) { return s.rwc.Write(p) }
func (s *syncStripper) Close() error                { return s.rwc.Close() }

// handle serves one stream: one request.
func (s *server) handle(ctx context.Context, st net.Conn) {
	c := agentproto.NewConn(st)
	defer c.Close()
	defer func() {
		// A bug in one request must not take PID 1, and the VM, down.
		if v := recover(); v != nil {
			s.log.Error("request handler panicked", "panic", v)
			replyError(c, fmt.Errorf("agent bug: %v", v))
		}
	}()
	var req agentproto.Request
	if err := c.ReadRequest(&req); err != nil {
		s.log.Debug("reading request", "err", err)
		return
	}
	switch req.Op {
	case agentproto.OpPing:
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
	case agentproto.OpSync:
		unix.Sync()
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
	case agentproto.OpPowerOff:
		if s.cfg.PowerOff == nil {
			replyError(c, errors.New("poweroff is not supported here"))
			return
		}
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
		c.Close()
		s.log.Info("poweroff requested by host")
		go s.cfg.PowerOff()
	case agentproto.OpExec:
		if req.Exec == nil {
			replyError(c, errors.New("exec request without exec field"))
			return
		}
		s.exec(ctx, st, c, req.Exec)
	case agentproto.OpRestored:
		s.restored(c)
	default:
		if s.handleWorkflow(ctx, st, c, &req) {
			return
		}
		replyError(c, fmt.Errorf("unknown op %q", req.Op))
	}
}

func replyError(c *agentproto.Conn, err error) {
	c.WriteJSON(agentproto.FrameError, agentproto.Error{Message: err.Error()})
}
