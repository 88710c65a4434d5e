package agent

import (
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// hangUpGrace is how long a process whose host went away has, after
// SIGHUP, before it is killed.
const hangUpGrace = 2 * time.Second

// hangUp ends a process whose host has gone (its stream ended while the
// process ran): output is no longer sent, the process group gets SIGHUP,
// as on a terminal hang-up, then SIGKILL unless it has exited by then.
// Background processes (OpProcStart) are the way to outlive the host.
func (s *server) hangUp(st net.Conn, pid int, exited *atomic.Bool) {
	s.log.Debug("host went away; hanging up", "pid", pid)
	st.SetWriteDeadline(time.Now())
	killGroup(pid, unix.SIGHUP)
	time.AfterFunc(hangUpGrace, func() {
		if !exited.Load() {
			killGroup(pid, unix.SIGKILL)
		}
	})
}
