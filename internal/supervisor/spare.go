package supervisor

import "github.com/hashicorp/yamux"

// A command's first cost in the guest is its new stream: the agent's yamux
// receive loop makes it, the accept loop takes it and starts a handler, all
// before the request is read (0.3-0.7 ms of the guest's only CPU under
// emulation). So the supervisor keeps one stream opened ahead, already
// accepted by the agent, whose handler waits for a request, and gives it
// to the next client. The next spare is opened when that client is done,
// while the guest is otherwise idle, not while it serves the command.

// agentStream returns the spare stream, or a new one when there is none
// (commands run at once, or back to back) or the session has ended (so
// that the client hears why).
func (s *supervisor) agentStream() (*yamux.Stream, error) {
	select {
	case st := <-s.spare:
		if !s.session.IsClosed() {
			return st, nil
		}
		st.Close()
	default:
	}
	return s.session.OpenStream()
}

// openSpare opens the spare stream unless one is waiting already. Its
// opening goes out at once rather than waiting for a request to ride with.
func (s *supervisor) openSpare() {
	if len(s.spare) > 0 {
		return
	}
	st, err := s.session.OpenStream()
	if err != nil {
		return
	}
	s.chanW.Flush()
	select {
	case s.spare <- st:
	default: // another client's end filled it meanwhile
		st.Close()
	}
}
