package agentproto

import (
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// YamuxConfig is the session configuration both ends use. Keepalives are off
// and the write timeout is long because a paused or snapshotted guest stops
// answering for as long as it is paused; the supervisor watches the VMM
// process instead. The window is large so that bulk output and file copies
// run at the channel's speed.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 24 * time.Hour
	c.MaxStreamWindowSize = 4 << 20
	c.StreamOpenTimeout = 0
	c.AcceptBacklog = 1024
	c.LogOutput = io.Discard
	return c
}
