package agent

import (
	"context"
	"net"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// handleWorkflow serves the ops beyond exec (files, environment,
// background processes, SSH); false for an op it does not know.
func (s *server) handleWorkflow(ctx context.Context, st net.Conn, c *agentproto.Conn, req *agentproto.Request) bool {
	switch req.Op {
	case agentproto.OpEnvSet, agentproto.OpEnvUnset, agentproto.OpEnvList:
		s.handleEnv(c, req.Op, req.Env)
		return true
	case agentproto.OpSSH:
		s.serveSSH(ctx, st, c, req.SSH)
		return true
	}
	if s.handleFile(ctx, c, req.Op, req.File) {
		return true
	}
	return s.handleProc(ctx, st, c, req)
}
