package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/smolvm/smolvm/internal/network"
)

// Network control operations, one per connection like the others.
const (
	opPortExpose = "port-expose" // forward a host port to a guest port
	opPortClose  = "port-close"  // undo a port-expose
	opNetStatus  = "net-status"  // report the network and its ports
	opSetEgress  = "set-egress"  // replace the egress policy
)

// NetRequest carries the arguments of the network operations.
type NetRequest struct {
	GuestPort int      `json:"guest_port,omitempty"`
	HostPort  int      `json:"host_port,omitempty"` // expose: 0 = pick one; close: the port
	Address   string   `json:"address,omitempty"`   // expose: host address ("" = 127.0.0.1)
	Egress    string   `json:"egress,omitempty"`    // set-egress: mode
	Allow     []string `json:"allow,omitempty"`     // set-egress: allowlist entries
}

// NetReply is the answer to a network operation. Code classifies a failure
// so the client can rebuild a sentinel error.
type NetReply struct {
	OK     bool      `json:"ok"`
	Error  string    `json:"error,omitempty"`
	Code   string    `json:"code,omitempty"` // "invalid", "not_found", "exists", "unsupported", "exhausted"
	Port   *Port     `json:"port,omitempty"`
	Status NetStatus `json:"status"`
}

// Failure codes and the errors they stand for.
var netCodes = []struct {
	code string
	err  error
}{
	{"invalid", network.ErrInvalid},
	{"not_found", network.ErrNotFound},
	{"exists", network.ErrExists},
	{"exhausted", network.ErrExhausted},
	{"taken", network.ErrLeaseTaken},
	{"unsupported", errors.ErrUnsupported},
}

// handleNet answers one network operation and closes c.
func (s *supervisor) handleNet(c net.Conn, req request) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var r NetRequest
	if req.Net != nil {
		r = *req.Net
	}
	var rep NetReply
	var err error
	switch req.Op {
	case opPortExpose:
		var p Port
		if p, err = s.exposePort(ctx, r); err == nil {
			rep.Port = &p
		}
	case opPortClose:
		err = s.closePort(ctx, r.HostPort)
	case opSetEgress:
		err = s.setEgress(ctx, r)
	}
	if err != nil {
		rep.Error = err.Error()
		for _, nc := range netCodes {
			if errors.Is(err, nc.err) {
				rep.Code = nc.code
				break
			}
		}
		s.log.Warn("network operation", "op", req.Op, "err", err)
	} else {
		rep.OK = true
	}
	rep.Status = s.netStatus()
	writeLine(c, rep)
}

// callNet sends one network operation and reads its reply; a failure
// carries the sentinel error of its code.
func callNet(ctx context.Context, dir, op string, r NetRequest) (NetReply, error) {
	c, br, err := dial(ctx, dir, request{Op: op, Net: &r})
	if err != nil {
		return NetReply{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var rep NetReply
	if err := readLine(br, &rep); err != nil {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		return rep, fmt.Errorf("%w: %v", ErrNotRunning, err)
	}
	if rep.OK {
		return rep, nil
	}
	for _, nc := range netCodes {
		if rep.Code == nc.code {
			return rep, &NetError{Msg: rep.Error, Err: nc.err}
		}
	}
	return rep, errors.New(rep.Error)
}

// NetError is a network operation's failure as the supervisor reported
// it; it unwraps to the sentinel error of its class (network.ErrInvalid,
// network.ErrNotFound, errors.ErrUnsupported, ...).
type NetError struct {
	Msg string
	Err error
}

func (e *NetError) Error() string { return e.Msg }
func (e *NetError) Unwrap() error { return e.Err }

// ExposePort asks the supervisor in dir to forward a host port (0 = pick
// one) on address ("" = 127.0.0.1) to guestPort.
func ExposePort(ctx context.Context, dir string, guestPort, hostPort int, address string) (Port, error) {
	rep, err := callNet(ctx, dir, opPortExpose, NetRequest{GuestPort: guestPort, HostPort: hostPort, Address: address})
	if err != nil {
		return Port{}, err
	}
	if rep.Port == nil {
		return Port{}, errors.New("supervisor sent no port")
	}
	return *rep.Port, nil
}

// ClosePort asks the supervisor in dir to stop forwarding hostPort.
func ClosePort(ctx context.Context, dir string, hostPort int) error {
	_, err := callNet(ctx, dir, opPortClose, NetRequest{HostPort: hostPort})
	return err
}

// GetNetStatus asks the supervisor in dir about its VM's network.
func GetNetStatus(ctx context.Context, dir string) (NetStatus, error) {
	rep, err := callNet(ctx, dir, opNetStatus, NetRequest{})
	return rep.Status, err
}

// SetEgress asks the supervisor in dir to replace the VM's egress policy.
func SetEgress(ctx context.Context, dir, mode string, allow []string) error {
	_, err := callNet(ctx, dir, opSetEgress, NetRequest{Egress: mode, Allow: allow})
	return err
}
