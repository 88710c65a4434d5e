package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
)

// Exposure is a host port forwarded to a guest port.
type Exposure struct {
	VMID      string
	GuestPort int
	HostPort  int
	Address   string // host address it answers on: "127.0.0.1", "0.0.0.0" (all) or one address
}

// ExposePort forwards TCP addr:hostPort on the host to guestPort on vmID
// (tap mode; in user mode the VMM forwards, see HostFwdAdd). hostPort 0
// takes a free port from Config.PortRange; addr "" means 127.0.0.1.
//
// Two mechanisms, because nftables DNAT does not apply to connections to
// 127.0.0.1 without route_localnet (which would let any host process
// reach the guest through martian routing and which we don't turn on):
//   - loopback (addr 127.x, or 0.0.0.0): a TCP proxy in this process on
//     127.0.0.1:hostPort, dialing the guest;
//   - other addresses (addr one of the host's, or 0.0.0.0): DNAT rules in
//     nat-pre (other hosts; never from a VM tap, which would bypass VM
//     isolation) and nat-out (this host's processes), so the guest sees the
//     real client address.
//
// The proxy lives as long as the Manager: it goes with the supervisor.
func (m *Manager) ExposePort(ctx context.Context, vmID string, guestPort, hostPort int, addr string) (Exposure, error) {
	e, err := m.checkExposure(vmID, guestPort, hostPort, addr)
	if err != nil {
		return Exposure{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.vms[vmID]
	if st == nil {
		return Exposure{}, fmt.Errorf("expose port of vm %s: %w", vmID, ErrNotFound)
	}
	x, err := m.expose(ctx, st, e)
	if err != nil {
		return Exposure{}, fmt.Errorf("expose port %d of vm %s: %w", guestPort, vmID, err)
	}
	st.ports[x.HostPort] = x
	m.log.Info("port exposed", "vm", vmID, "guest_port", guestPort, "host_port", x.HostPort, "address", x.Address)
	return x.Exposure, nil
}

func (m *Manager) checkExposure(vmID string, guestPort, hostPort int, addr string) (Exposure, error) {
	if err := checkVMID(vmID); err != nil {
		return Exposure{}, err
	}
	if err := checkPort(guestPort); err != nil {
		return Exposure{}, err
	}
	if hostPort != 0 {
		if err := checkPort(hostPort); err != nil {
			return Exposure{}, err
		}
	}
	if addr == "" {
		addr = "127.0.0.1"
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return Exposure{}, fmt.Errorf("%w: address %q: want an IPv4 address", ErrInvalid, addr)
	}
	return Exposure{VMID: vmID, GuestPort: guestPort, HostPort: hostPort, Address: a.String()}, nil
}

// expose leases the host port, starts the proxy and adds the DNAT rules,
// undoing what it did on error. The caller holds m.mu.
func (m *Manager) expose(ctx context.Context, st *vmState, e Exposure) (*exposure, error) {
	a := netip.MustParseAddr(e.Address)
	needProxy := a.IsLoopback() || a.IsUnspecified()
	needDNAT := !a.IsLoopback()
	if e.HostPort != 0 {
		if _, dup := st.ports[e.HostPort]; dup {
			return nil, fmt.Errorf("host port %d: %w", e.HostPort, ErrExists)
		}
	}
	x, err := m.leaseAndListen(ctx, st, e, needProxy)
	if err != nil {
		return nil, err
	}
	if needDNAT {
		err := m.flush(func(c *nftables.Conn) error {
			m.addExposeRules(c, st, x.Exposure)
			return nil
		})
		if err != nil {
			x.stop()
			return nil, errors.Join(fmt.Errorf("add dnat rules: %w", err), m.releasePort(ctx, st.id, x.HostPort))
		}
	}
	return x, nil
}

// leaseAndListen leases the host port (the one asked for, or the first free
// one that can also be bound) and, if asked, starts the loopback proxy.
func (m *Manager) leaseAndListen(ctx context.Context, st *vmState, e Exposure, proxy bool) (*exposure, error) {
	var busy []int // leased but bound by someone else: released at the end
	defer func() {
		for _, p := range busy {
			m.releasePort(ctx, st.id, p)
		}
	}()
	for range 32 {
		l, err := m.leases.Acquire(ctx, st.id, KindPort, m.cfg.PortRange, uint32(e.HostPort))
		if err != nil {
			return nil, fmt.Errorf("lease host port: %w", err)
		}
		x := &exposure{Exposure: e, guest: netip.AddrPortFrom(st.ip, uint16(e.GuestPort)), m: m}
		x.HostPort = int(l.Value)
		if !proxy {
			return x, nil
		}
		err = x.listen(ctx)
		if err == nil {
			return x, nil
		}
		if e.HostPort != 0 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, errors.Join(err, m.releasePort(ctx, st.id, x.HostPort))
		}
		busy = append(busy, x.HostPort)
	}
	return nil, fmt.Errorf("lease host port: %w: every port tried is in use", ErrExhausted)
}

func (m *Manager) releasePort(ctx context.Context, vmID string, port int) error {
	return m.leases.Release(context.WithoutCancel(ctx), Lease{VMID: vmID, Kind: KindPort, Value: uint32(port)})
}

// ClosePort undoes ExposePort: the proxy stops (open connections close),
// the DNAT rules and the port lease go.
func (m *Manager) ClosePort(ctx context.Context, vmID string, hostPort int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.vms[vmID]
	if st == nil || st.ports[hostPort] == nil {
		return fmt.Errorf("close port %d of vm %s: %w", hostPort, vmID, ErrNotFound)
	}
	st.ports[hostPort].stop()
	delete(st.ports, hostPort)
	err := m.flush(func(c *nftables.Conn) error { return m.delExposeRules(c, vmID, hostPort) })
	return errors.Join(err, m.releasePort(ctx, vmID, hostPort))
}

// Ports lists vmID's exposures by host port.
func (m *Manager) Ports(vmID string) []Exposure {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Exposure
	if st := m.vms[vmID]; st != nil {
		for _, x := range st.ports {
			out = append(out, x.Exposure)
		}
	}
	slices.SortFunc(out, func(a, b Exposure) int { return a.HostPort - b.HostPort })
	return out
}

// exposure is one exposed port's proxy.
type exposure struct {
	Exposure
	guest netip.AddrPort
	m     *Manager

	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (x *exposure) listen(ctx context.Context) error {
	addr := "127.0.0.1"
	if a := netip.MustParseAddr(x.Address); a.IsLoopback() {
		addr = a.String()
	}
	err := x.m.ns.do(func() error {
		var err error
		x.ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp4", net.JoinHostPort(addr, strconv.Itoa(x.HostPort)))
		return err
	})
	if err != nil {
		return fmt.Errorf("listen on %s:%d: %w", addr, x.HostPort, err)
	}
	x.conns = map[net.Conn]struct{}{}
	x.wg.Add(1)
	go x.serve()
	return nil
}

func (x *exposure) serve() {
	defer x.wg.Done()
	for {
		c, err := x.ln.Accept()
		if err != nil {
			return
		}
		if !x.track(c, true) {
			c.Close()
			return
		}
		x.wg.Add(1)
		go x.relay(c)
	}
}

// track adds or removes a connection; false means the proxy is stopping.
func (x *exposure) track(c net.Conn, add bool) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.conns == nil {
		return false
	}
	if add {
		x.conns[c] = struct{}{}
	} else {
		delete(x.conns, c)
	}
	return true
}

const guestDialTimeout = 5 * time.Second

func (x *exposure) relay(client net.Conn) {
	defer x.wg.Done()
	defer x.track(client, false)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), guestDialTimeout)
	guest, err := x.m.ns.dial(ctx, "tcp4", x.guest.String())
	cancel()
	if err != nil {
		x.m.log.Debug("port proxy dial guest", "vm", x.VMID, "guest", x.guest, "err", err)
		return
	}
	if !x.track(guest, true) {
		guest.Close()
		return
	}
	defer x.track(guest, false)
	defer guest.Close()
	done := make(chan struct{})
	go func() {
		pipe(guest, client)
		close(done)
	}()
	pipe(client, guest)
	<-done
}

// pipe copies src to dst and then half-closes dst's write side.
func pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// stop closes the listener and every open connection and waits for the
// goroutines.
func (x *exposure) stop() {
	if x.ln == nil {
		return
	}
	x.ln.Close()
	x.mu.Lock()
	for c := range x.conns {
		c.Close()
	}
	x.conns = nil
	x.mu.Unlock()
	x.wg.Wait()
}
