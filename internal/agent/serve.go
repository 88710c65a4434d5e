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
}

// server is the state shared by one Serve call's streams.
type server struct {
	cfg    Config
	log    *slog.Logger
	reaper *Reaper
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
	if s.cfg.Hostname == "" {
		s.cfg.Hostname, _ = os.Hostname()
	}
	if _, err := io.WriteString(conn, cfg.Hello.Line()); err != nil {
		return fmt.Errorf("writing hello: %w", err)
	}
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = io.Discard
	ycfg.Logger = nil
	// Under software emulation the host can stall for a while; a slow
	// reader must not kill the session.
	ycfg.ConnectionWriteTimeout = time.Minute
	sess, err := yamux.Server(conn, ycfg)
	if err != nil {
		return fmt.Errorf("starting yamux session: %w", err)
	}
	defer sess.Close()
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

// handle serves one stream: one request.
func (s *server) handle(ctx context.Context, st net.Conn) {
	c := agentproto.NewConn(st)
	defer c.Close()
	var req agentproto.Request
	if err := c.ReadJSON(agentproto.FrameRequest, &req); err != nil {
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
	default:
		replyError(c, fmt.Errorf("unknown op %q", req.Op))
	}
}

func replyError(c *agentproto.Conn, err error) {
	c.WriteJSON(agentproto.FrameError, agentproto.Error{Message: err.Error()})
}
