package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmm/qemu"
)

// Network modes of a NetPlan.
const (
	NetNone = "none" // no NIC
	NetUser = "user" // QEMU's user-mode stack (slirp): rootless, no filtering
	NetTap  = "tap"  // a tap per VM, routed /32, nftables policy (network.Manager)
)

// QEMU's user-mode network as its built-in DHCP would configure the guest;
// the agent is given it statically on the kernel command line instead.
var (
	userGuestIP = netip.MustParsePrefix("10.0.2.15/24")
	userGateway = netip.MustParseAddr("10.0.2.2")
	userDNS     = netip.MustParseAddr("10.0.2.3")
)

// NetPlan is the VM's network, part of its Plan. The supervisor sets it up
// before the VMM starts and tears it down after the VMM exits; in tap mode
// its network.Manager (and so the VM's DNS resolver and port proxies)
// lives as long as the supervisor.
type NetPlan struct {
	Mode      string   `json:"mode"`                 // NetNone ("" too), NetUser or NetTap
	Egress    string   `json:"egress,omitempty"`     // network.Egress* ("" = allow-all)
	Allow     []string `json:"allow,omitempty"`      // allowlist entries: CIDR, address, domain, *.domain
	RateMbps  int      `json:"rate_mbps,omitempty"`  // per direction; 0 = unlimited
	AllowVMs  bool     `json:"allow_vms,omitempty"`  // may talk to other VMs that also allow it
	AllowHost bool     `json:"allow_host,omitempty"` // may reach every host address
	DNS       []string `json:"dns,omitempty"`        // resolver upstreams host:port (default: the host's resolv.conf)
	LockFile  string   `json:"lock_file,omitempty"`  // flock'd around Setup; cleanup's Sweep takes it too
}

// Port is one host port forwarded to a guest port.
type Port struct {
	GuestPort int    `json:"guest_port"`
	HostPort  int    `json:"host_port"`
	Address   string `json:"address"` // host address it answers on
}

// NetStatus is what a running supervisor reports about its VM's network.
type NetStatus struct {
	Mode    string `json:"mode"`
	GuestIP string `json:"guest_ip,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	DNS     string `json:"dns,omitempty"`
	Tap     string `json:"tap,omitempty"`
	Egress  string `json:"egress,omitempty"`
	Ports   []Port `json:"ports,omitempty"`
}

// netState is the supervisor's side of the VM's network.
type netState struct {
	mode string
	mgr  *network.Manager    // tap mode
	att  *network.Attachment // tap mode
	st   NetStatus

	mu        sync.Mutex
	userPorts map[int]Port // user mode: hostfwd rules by host port

	teardown sync.Once
}

// userPortRange is where user-mode exposures pick a host port.
var userPortRange = network.Range{Min: 20000, Max: 29999}

// setupNet gives the VM its network before the VMM starts: it adds the NIC
// to the VMM spec and the guest's address to its kernel command line. On
// error nothing it made is left.
func (s *supervisor) setupNet(ctx context.Context) error {
	p := s.plan.Net
	if p == nil || p.Mode == "" || p.Mode == NetNone {
		s.net = &netState{mode: NetNone, st: NetStatus{Mode: NetNone}}
		return nil
	}
	switch p.Mode {
	case NetUser:
		if s.plan.Backend == "firecracker" {
			return errors.New("firecracker has no user-mode networking: use --net tap (as root) or --net none")
		}
		s.net = &netState{mode: NetUser, userPorts: map[int]Port{},
			st: NetStatus{Mode: NetUser, GuestIP: userGuestIP.Addr().String(),
				Gateway: userGateway.String(), DNS: userDNS.String(), Egress: network.EgressAllowAll}}
		s.plan.VMM.Net = append(s.plan.VMM.Net, vmm.NetIf{Mode: NetUser, MAC: network.GuestMAC(userGuestIP.Addr())})
		s.appendCmdline(fmt.Sprintf("%s=%s %s=%s %s=%s", network.CmdlineIP, userGuestIP,
			network.CmdlineGateway, userGateway, network.CmdlineDNS, userDNS))
		return nil
	case NetTap:
		return s.setupTap(ctx, p)
	}
	return fmt.Errorf("network mode %q: want none, user or tap", p.Mode)
}

func (s *supervisor) setupTap(ctx context.Context, p *NetPlan) (err error) {
	policy, err := network.ParsePolicy(p.Egress, p.Allow)
	if err != nil {
		return err
	}
	unlock, err := lockFile(p.LockFile)
	if err != nil {
		return err
	}
	defer unlock()
	mgr, err := network.New(ctx, network.Config{
		Leases: NetLeases(s.opts.Store), Upstreams: p.DNS, Logger: s.log,
	})
	if err != nil {
		return fmt.Errorf("starting network manager: %w", err)
	}
	opts := network.VMOptions{Egress: policy, RateMbps: p.RateMbps, AllowVMs: p.AllowVMs, AllowHost: p.AllowHost}
	var rx, tx int64
	if s.plan.Backend == "firecracker" {
		// Firecracker shapes both directions in the VMM (see network's doc).
		rx, tx = int64(p.RateMbps)*125000, int64(p.RateMbps)*125000
		opts.RateMbps = 0
	}
	att, err := mgr.Setup(ctx, s.vm.ID, opts)
	if err != nil {
		return errors.Join(err, mgr.Close())
	}
	s.net = &netState{mode: NetTap, mgr: mgr, att: att, st: NetStatus{
		Mode: NetTap, GuestIP: att.GuestIP.String(), Gateway: att.Gateway.String(),
		DNS: att.DNS.String(), Tap: att.Tap, Egress: policy.String()}}
	s.plan.VMM.Net = append(s.plan.VMM.Net, att.NetIf(rx, tx))
	s.appendCmdline(network.GuestCmdline(att))
	s.log.Info("network set up", "tap", att.Tap, "guest_ip", att.GuestIP, "egress", policy.String())
	return nil
}

// restoredNet is the network identity a restored guest must take: its
// tap attachment's, or nil when it keeps the snapshot's (user mode: every
// VMM has its own 10.0.2.0/24; none: no NIC).
func (n *netState) restoredNet() *agentproto.RestoredNet {
	if n == nil || n.mode != NetTap || n.att == nil {
		return nil
	}
	return &agentproto.RestoredNet{
		IP:      netip.PrefixFrom(n.att.GuestIP, 32).String(),
		Gateway: n.att.Gateway.String(),
		DNS:     n.att.DNS.String(),
		MAC:     n.att.MAC,
	}
}

func (s *supervisor) appendCmdline(words string) {
	s.plan.VMM.Cmdline = strings.TrimSpace(s.plan.VMM.Cmdline + " " + words)
}

// teardownNet removes the VM's network once the VMM is gone (or never
// started): tap, nftables objects, proxies, leases. It is safe to call
// more than once and when setupNet never ran.
func (s *supervisor) teardownNet() {
	n := s.net
	if n == nil {
		return
	}
	n.teardown.Do(func() { s.removeNet(n) })
}

func (s *supervisor) removeNet(n *netState) {
	ctx := context.WithoutCancel(context.Background())
	switch n.mode {
	case NetTap:
		if err := n.mgr.Teardown(ctx, s.opts.ID); err != nil {
			s.log.Error("tearing down network", "err", err)
		}
		if err := n.mgr.Close(); err != nil {
			s.log.Warn("closing network manager", "err", err)
		}
	case NetUser:
		// The forwards died with QEMU; their leases go here.
		if err := s.opts.Store.ReleaseLeases(ctx, s.opts.ID, string(network.KindPort)); err != nil {
			s.log.Error("releasing port leases", "err", err)
		}
	}
	s.log.Info("network torn down", "mode", n.mode)
}

// lockFile takes an exclusive flock on path ("" = no lock) and returns its
// release.
func lockFile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening network lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// LockNetwork takes the lock that serialises network Setup with Sweep.
func LockNetwork(path string) (unlock func(), err error) { return lockFile(path) }

// exposePort forwards a host port to guestPort.
func (s *supervisor) exposePort(ctx context.Context, r NetRequest) (Port, error) {
	n := s.net
	switch {
	case n == nil || n.mode == NetNone:
		return Port{}, fmt.Errorf("%w: the vm has no network (--net none)", network.ErrInvalid)
	case n.mode == NetTap:
		e, err := n.mgr.ExposePort(ctx, s.opts.ID, r.GuestPort, r.HostPort, r.Address)
		if err != nil {
			return Port{}, err
		}
		return Port{GuestPort: e.GuestPort, HostPort: e.HostPort, Address: e.Address}, nil
	}
	return s.hostFwdAdd(ctx, r)
}

// closePort undoes exposePort.
func (s *supervisor) closePort(ctx context.Context, hostPort int) error {
	n := s.net
	switch {
	case n == nil || n.mode == NetNone:
		return fmt.Errorf("port %d: %w", hostPort, network.ErrNotFound)
	case n.mode == NetTap:
		return n.mgr.ClosePort(ctx, s.opts.ID, hostPort)
	}
	return s.hostFwdRemove(ctx, hostPort)
}

// netStatus reports the network and its exposed ports.
func (s *supervisor) netStatus() NetStatus {
	n := s.net
	if n == nil {
		return NetStatus{Mode: NetNone}
	}
	n.mu.Lock()
	st := n.st
	n.mu.Unlock()
	switch n.mode {
	case NetTap:
		for _, e := range n.mgr.Ports(s.opts.ID) {
			st.Ports = append(st.Ports, Port{GuestPort: e.GuestPort, HostPort: e.HostPort, Address: e.Address})
		}
	case NetUser:
		n.mu.Lock()
		for _, p := range n.userPorts {
			st.Ports = append(st.Ports, p)
		}
		n.mu.Unlock()
		slices.SortFunc(st.Ports, func(a, b Port) int { return a.HostPort - b.HostPort })
	}
	return st
}

// setEgress replaces the egress policy of a running tap-mode VM.
func (s *supervisor) setEgress(ctx context.Context, r NetRequest) error {
	n := s.net
	if n == nil || n.mode != NetTap {
		mode := NetNone
		if n != nil {
			mode = n.mode
		}
		return fmt.Errorf("%w: egress policy needs --net tap (this vm has --net %s)", errors.ErrUnsupported, mode)
	}
	p, err := network.ParsePolicy(r.Egress, r.Allow)
	if err != nil {
		return err
	}
	if err := n.mgr.SetPolicy(ctx, s.opts.ID, p); err != nil {
		return err
	}
	n.mu.Lock()
	n.st.Egress = p.String()
	n.mu.Unlock()
	return nil
}

// monitor is the part of a QEMU instance user-mode forwarding needs.
type monitor interface {
	Execute(ctx context.Context, cmd string, args, out any) error
}

// hostFwdAdd forwards a host port to the guest through QEMU's user-mode
// stack, leasing the host port in the store so no other VM takes it.
func (s *supervisor) hostFwdAdd(ctx context.Context, r NetRequest) (Port, error) {
	if _, err := network.HostFwdAdd(qemu.NetdevID(0), r.Address, 1, r.GuestPort); err != nil {
		return Port{}, err // bad address or guest port
	}
	n := s.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, dup := n.userPorts[r.HostPort]; dup && r.HostPort != 0 {
		return Port{}, fmt.Errorf("host port %d: %w", r.HostPort, network.ErrExists)
	}
	leases := NetLeases(s.opts.Store)
	var failed []network.Lease // leased but refused by QEMU (in use): released at the end
	defer func() {
		for _, l := range failed {
			leases.Release(context.WithoutCancel(ctx), l)
		}
	}()
	for range 32 {
		l, err := leases.Acquire(ctx, s.opts.ID, network.KindPort, userPortRange, uint32(r.HostPort))
		if err != nil {
			return Port{}, fmt.Errorf("lease host port: %w", err)
		}
		p := Port{GuestPort: r.GuestPort, HostPort: int(l.Value), Address: cmpOr(r.Address, "127.0.0.1")}
		line, _ := network.HostFwdAdd(qemu.NetdevID(0), p.Address, p.HostPort, p.GuestPort)
		out, err := s.monitorCommand(ctx, line)
		if err == nil && out != "" {
			err = fmt.Errorf("qemu: %s", out) // hostfwd_add is silent when it works
		}
		if err == nil {
			n.userPorts[p.HostPort] = p
			s.log.Info("port exposed", "guest_port", p.GuestPort, "host_port", p.HostPort, "address", p.Address)
			return p, nil
		}
		failed = append(failed, l)
		if r.HostPort != 0 {
			return Port{}, fmt.Errorf("expose port %d: %w", r.GuestPort, err)
		}
	}
	return Port{}, fmt.Errorf("lease host port: %w: every port tried is in use", network.ErrExhausted)
}

func (s *supervisor) hostFwdRemove(ctx context.Context, hostPort int) error {
	n := s.net
	n.mu.Lock()
	defer n.mu.Unlock()
	p, ok := n.userPorts[hostPort]
	if !ok {
		return fmt.Errorf("port %d: %w", hostPort, network.ErrNotFound)
	}
	line, err := network.HostFwdRemove(qemu.NetdevID(0), p.Address, hostPort)
	if err != nil {
		return err
	}
	out, err := s.monitorCommand(ctx, line)
	if err == nil && !strings.Contains(out, "removed") {
		err = fmt.Errorf("qemu: %s", out) // "host forwarding rule for ... removed" when it works
	}
	if err != nil {
		return fmt.Errorf("close port %d: %w", hostPort, err)
	}
	delete(n.userPorts, hostPort)
	return NetLeases(s.opts.Store).Release(ctx, network.Lease{VMID: s.opts.ID, Kind: network.KindPort, Value: uint32(hostPort)})
}

// monitorCommand runs a human monitor command through QMP and returns its
// text output, in which QEMU reports how it went.
func (s *supervisor) monitorCommand(ctx context.Context, line string) (string, error) {
	m, ok := s.inst.(monitor)
	if !ok {
		return "", fmt.Errorf("%w: the %s backend has no monitor for user-mode forwarding", errors.ErrUnsupported, s.plan.Backend)
	}
	var out string
	if err := m.Execute(ctx, "human-monitor-command", map[string]string{"command-line": line}, &out); err != nil {
		return "", fmt.Errorf("%s: %w", line, err)
	}
	return strings.TrimSpace(out), nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
