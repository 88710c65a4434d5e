package smolvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// NetMode says how a VM is networked.
type NetMode string

const (
	// NetNone gives the VM no network interface.
	NetNone NetMode = "none"
	// NetUser is QEMU's user-mode network: rootless, NAT to the host's
	// network, no egress policy; the guest reaches the host's loopback
	// services at 10.0.2.2.
	NetUser NetMode = "user"
	// NetTap gives the VM a tap device on a routed /32 with NAT, an egress
	// policy, a filtering DNS resolver and isolation from other VMs and the
	// host. It needs root with CAP_NET_ADMIN.
	NetTap NetMode = "tap"
)

// Egress policy modes (Config.Egress).
const (
	EgressAllowAll  = network.EgressAllowAll
	EgressDenyAll   = network.EgressDenyAll
	EgressAllowlist = network.EgressAllowlist
)

// MaxNetRateMbps bounds Config.NetRateMbps.
const MaxNetRateMbps = 100_000

// Port is a host port forwarded to a guest port.
type Port struct {
	GuestPort int    `json:"guest_port"`
	HostPort  int    `json:"host_port"`
	Address   string `json:"address"` // host address it answers on
}

func (p Port) String() string {
	return fmt.Sprintf("%s:%d->%d", p.Address, p.HostPort, p.GuestPort)
}

// ExposeOptions choose the host side of an exposed port.
type ExposeOptions struct {
	HostPort int    // 0 picks a free port (20000-29999)
	Address  string // host address to answer on; "" = 127.0.0.1, "0.0.0.0" = all
}

// NetInfo is a VM's network as it is (while running) or as configured.
type NetInfo struct {
	Mode    NetMode `json:"mode"`
	GuestIP string  `json:"guest_ip,omitempty"`
	Gateway string  `json:"gateway,omitempty"`
	DNS     string  `json:"dns,omitempty"`
	Tap     string  `json:"tap,omitempty"`
	Egress  string  `json:"egress,omitempty"`
	Ports   []Port  `json:"ports,omitempty"`
}

// netDefaults fills in and checks the network fields of c.
func (c Config) netDefaults() (Config, error) {
	if c.Net == "" {
		c.Net = NetUser
		if netPrivileged() {
			c.Net = NetTap
		}
	}
	policy, err := network.ParsePolicy(c.Egress, c.Allow)
	if err != nil {
		return c, invalidNet(err)
	}
	c.Egress = policy.Mode
	if c.NetRateMbps < 0 || c.NetRateMbps > MaxNetRateMbps {
		return c, fmt.Errorf("%w net rate %d Mbit/s: want 0 (unlimited) to %d", ErrInvalid, c.NetRateMbps, MaxNetRateMbps)
	}
	if c.DNS, err = normalizeDNS(c.DNS); err != nil {
		return c, err
	}
	tapOnly := c.Egress != EgressAllowAll || c.NetRateMbps != 0 || c.AllowVMs || c.AllowHost || len(c.DNS) > 0
	switch c.Net {
	case NetTap:
		if !netPrivileged() {
			return c, fmt.Errorf("%w: --net tap needs root with CAP_NET_ADMIN (use --net user)", ErrInvalid)
		}
	case NetUser:
		if tapOnly {
			return c, fmt.Errorf("%w: egress policy, rate limit, VM/host access and DNS upstreams need --net tap (user-mode networking cannot filter)", ErrInvalid)
		}
		if c.Backend == "firecracker" {
			return c, fmt.Errorf("%w: firecracker has no user-mode networking: use --net tap or --net none", ErrInvalid)
		}
	case NetNone:
		if tapOnly {
			return c, fmt.Errorf("%w: network options given with --net none", ErrInvalid)
		}
	default:
		return c, fmt.Errorf("%w network mode %q: want none, user or tap", ErrInvalid, c.Net)
	}
	return c, nil
}

// normalizeDNS turns "addr" and "addr:port" entries into "addr:port".
func normalizeDNS(servers []string) ([]string, error) {
	var out []string
	for _, s := range servers {
		if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Is4() {
			out = append(out, ap.String())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("%w dns server %q: want an IPv4 address, optionally with :port", ErrInvalid, s)
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out, nil
}

// netPrivileged reports whether this process may make taps and nftables
// rules: root with CAP_NET_ADMIN in its effective set.
func netPrivileged() bool {
	if os.Geteuid() != 0 {
		return false
	}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			const capNetAdmin = 12
			return err == nil && caps&(1<<capNetAdmin) != 0
		}
	}
	return false
}

// netPlan is the supervisor's view of cfg's network.
func (h *host) netPlan(cfg Config) *supervisor.NetPlan {
	if cfg.Net == NetNone || cfg.Net == "" {
		return nil
	}
	return &supervisor.NetPlan{
		Mode: string(cfg.Net), Egress: cfg.Egress, Allow: cfg.Allow, RateMbps: cfg.NetRateMbps,
		AllowVMs: cfg.AllowVMs, AllowHost: cfg.AllowHost, DNS: cfg.DNS, LockFile: h.netLockPath(),
	}
}

func (h *host) netLockPath() string { return h.path("network.lock") }

// ExposePort forwards a host port to guestPort of the running VM until
// ClosePort, stop or delete. In tap mode a loopback address is served by
// a proxy in the supervisor and other addresses by nftables DNAT; in user
// mode QEMU forwards.
func (vm *VM) ExposePort(ctx context.Context, guestPort int, o ExposeOptions) (Port, error) {
	if guestPort < 1 || guestPort > 65535 || o.HostPort < 0 || o.HostPort > 65535 {
		return Port{}, fmt.Errorf("%w port: guest %d, host %d: want 1-65535 (host 0 = pick one)", ErrInvalid, guestPort, o.HostPort)
	}
	dir, err := vm.runningDir(ctx)
	if err != nil {
		return Port{}, err
	}
	p, err := supervisor.ExposePort(ctx, dir, guestPort, o.HostPort, o.Address)
	if err != nil {
		return Port{}, fmt.Errorf("exposing port %d of vm %s: %w", guestPort, vm.id, netErr(err))
	}
	return Port(p), nil
}

// ClosePort stops forwarding hostPort.
func (vm *VM) ClosePort(ctx context.Context, hostPort int) error {
	dir, err := vm.runningDir(ctx)
	if err != nil {
		return err
	}
	if err := supervisor.ClosePort(ctx, dir, hostPort); err != nil {
		return fmt.Errorf("closing port %d of vm %s: %w", hostPort, vm.id, netErr(err))
	}
	return nil
}

// Ports lists the running VM's exposed ports by host port.
func (vm *VM) Ports(ctx context.Context) ([]Port, error) {
	dir, err := vm.runningDir(ctx)
	if err != nil {
		return nil, err
	}
	st, err := supervisor.GetNetStatus(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("listing ports of vm %s: %w", vm.id, netErr(err))
	}
	return portsOf(st), nil
}

// SetEgress replaces the VM's egress policy (mode EgressAllowAll,
// EgressDenyAll or EgressAllowlist with allow entries: CIDR, address,
// domain or *.domain). A running VM gets it at once (new connections only;
// established ones stay); the VM's configuration keeps it for later starts.
// Only tap-mode VMs have a policy.
func (vm *VM) SetEgress(ctx context.Context, mode string, allow ...string) error {
	policy, err := network.ParsePolicy(mode, allow)
	if err != nil {
		return invalidNet(err)
	}
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return err
	}
	rec, err := vm.record(r)
	if err != nil {
		return err
	}
	if rec.Config.Net != NetTap {
		return fmt.Errorf("%w: egress policy needs --net tap (vm %s has --net %s)", ErrInvalid, vm.id, cmpNet(rec.Config.Net))
	}
	if r.Status == store.StatusRunning {
		if err := supervisor.SetEgress(ctx, r.Dir, policy.Mode, allow); err != nil {
			return fmt.Errorf("setting egress of vm %s: %w", vm.id, netErr(err))
		}
	}
	_, err = vm.h.store.UpdateVM(ctx, vm.id, func(v *store.VM) error {
		var rec record
		if err := json.Unmarshal(v.Config, &rec); err != nil {
			return err
		}
		rec.Config.Egress, rec.Config.Allow = policy.Mode, allow
		b, err := json.Marshal(rec)
		v.Config = b
		return err
	})
	return err
}

// runningDir is the VM's directory if it is running, else ErrState.
func (vm *VM) runningDir(ctx context.Context) (string, error) {
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return "", err
	}
	if r.Status != store.StatusRunning {
		return "", fmt.Errorf("vm %s: %w: it is %s", vm.id, ErrState, r.Status)
	}
	return r.Dir, nil
}

// netInfo describes the network of a VM: live from its supervisor when it
// runs, else as configured.
func netInfo(ctx context.Context, r store.VM, cfg Config) *NetInfo {
	ni := &NetInfo{Mode: cmpNet(cfg.Net), Egress: cfg.Egress}
	if cfg.Net == NetUser || cfg.Net == NetNone {
		ni.Egress = ""
	}
	if r.Status != store.StatusRunning {
		return ni
	}
	st, err := supervisor.GetNetStatus(ctx, r.Dir)
	if err != nil {
		return ni
	}
	return &NetInfo{Mode: NetMode(st.Mode), GuestIP: st.GuestIP, Gateway: st.Gateway, DNS: st.DNS,
		Tap: st.Tap, Egress: st.Egress, Ports: portsOf(st)}
}

func cmpNet(m NetMode) NetMode {
	if m == "" {
		return NetNone // rows from before networking
	}
	return m
}

func portsOf(st supervisor.NetStatus) []Port {
	out := make([]Port, 0, len(st.Ports))
	for _, p := range st.Ports {
		out = append(out, Port(p))
	}
	return out
}

// invalidNet is a network.ErrInvalid error as an ErrInvalid one, read
// "invalid egress mode ..." rather than repeating both sentinels.
func invalidNet(err error) error {
	msg := strings.TrimPrefix(err.Error(), network.ErrInvalid.Error()+": ")
	return &netInvalidError{msg: "invalid " + msg, err: err}
}

type netInvalidError struct {
	msg string
	err error
}

func (e *netInvalidError) Error() string   { return e.msg }
func (e *netInvalidError) Unwrap() []error { return []error{ErrInvalid, e.err} }

// netErr maps the network package's sentinels to the SDK's.
func netErr(err error) error {
	for _, m := range []struct{ from, to error }{
		{network.ErrInvalid, ErrInvalid},
		{network.ErrNotFound, ErrNotFound},
		{network.ErrExists, ErrExists},
		{network.ErrLeaseTaken, ErrExists},
	} {
		if errors.Is(err, m.from) {
			return fmt.Errorf("%w: %w", m.to, err)
		}
	}
	return err
}
