package agent

import (
	"sync"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// stdioPool keeps one set of standard streams ready for the next plain
// exec (no stdin, no terminal), the common case. Making a set (three fds,
// two of them pipe ends in Go's poller) costs a dozen system calls and
// ~0.2-0.3 ms of guest CPU under emulation; made after a command has
// answered, while the host reads the answer, it is off the next command's
// path.
type stdioPool struct {
	mu     sync.Mutex
	spare  *execIO
	closed bool
}

// get returns the spare set when req can use it, else a new one.
func (p *stdioPool) get(req *agentproto.ExecRequest) (*execIO, error) {
	if !req.Stdin && !req.TTY {
		p.mu.Lock()
		e := p.spare
		p.spare = nil
		p.mu.Unlock()
		if e != nil {
			return e, nil
		}
	}
	return newExecIO(req)
}

// refill makes a spare set if there is none.
func (p *stdioPool) refill() {
	p.mu.Lock()
	need := p.spare == nil && !p.closed
	p.mu.Unlock()
	if !need {
		return
	}
	e, err := newExecIO(&agentproto.ExecRequest{})
	if err != nil {
		return // the next exec makes its own, and reports the error
	}
	p.mu.Lock()
	if p.spare == nil && !p.closed {
		p.spare, e = e, nil
	}
	p.mu.Unlock()
	if e != nil {
		e.release()
	}
}

// close releases the spare set; later refills make none.
func (p *stdioPool) close() {
	p.mu.Lock()
	e := p.spare
	p.spare, p.closed = nil, true
	p.mu.Unlock()
	if e != nil {
		e.release()
	}
}
