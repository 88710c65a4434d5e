package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Config configures a Manager. The zero value works on a normal host.
type Config struct {
	// Subnet is the guest address pool (default DefaultSubnet).
	Subnet netip.Prefix
	// Table is the nftables table (family inet) smolvm owns (default "smolvm").
	Table string
	// Leases records address and port leases (default: a fresh MemLeases,
	// which is only right for tests and single-process use).
	Leases Leases
	// Uplink is the interface guests' traffic is masqueraded out of
	// (default: the interface of the IPv4 default route; with none, any
	// interface that is not a smolvm tap).
	Uplink string
	// Upstreams are the DNS servers ("host:port") the resolver forwards
	// allowed queries to (default: nameservers in ResolvConf).
	Upstreams []string
	// ResolvConf is read for Upstreams (default /etc/resolv.conf).
	ResolvConf string
	// MinTTL is the shortest time an address the resolver let through stays
	// in the VM's set (default 60s); longer DNS TTLs are kept as they are.
	MinTTL time.Duration
	// PortRange is where ExposePort picks host ports when none is asked for
	// (default 20000-29999).
	PortRange Range
	// NetNS is the path of the network namespace to work in, e.g.
	// /run/netns/x (default: the process's own). Tests use it.
	NetNS string
	// Logger receives debug and warning logs (nil = discard).
	Logger *slog.Logger
}

// VMOptions are one VM's network settings.
type VMOptions struct {
	// Egress is the egress policy (zero value: allow all).
	Egress Policy
	// RateMbps limits the guest's traffic in each direction, in megabits per
	// second (0 = unlimited). Host to guest is shaped by a tbf qdisc on the
	// tap; guest to host is policed (excess dropped) by an nftables limit.
	RateMbps int
	// AllowVMs lets this VM open connections to, and accept them from, other
	// VMs that also have AllowVMs.
	AllowVMs bool
	// AllowHost lets this VM reach every address of the host, not only the
	// resolver.
	AllowHost bool
	// Link, if set, names an existing link to use in place of a new tap
	// (tests hand in one end of a veth pair). Setup renames it to the VM's
	// tap name and takes ownership: Teardown deletes it.
	Link string
}

// Attachment is what Setup made for a VM.
type Attachment struct {
	VMID    string
	Tap     string     // host link name (TapName(VMID))
	MAC     string     // MAC address for the guest's NIC
	GuestIP netip.Addr // the guest's address (a /32)
	Gateway netip.Addr // the host side of every tap
	DNS     netip.Addr // the resolver the guest must use (the gateway)
}

// NetIf is the attachment as a VMM network interface; rx and tx are the
// backend's own rate limits in bytes per second (Firecracker has them; 0 =
// none).
func (a *Attachment) NetIf(rxBps, txBps int64) vmm.NetIf {
	return vmm.NetIf{Mode: "tap", Tap: a.Tap, MAC: a.MAC, RxRateBps: rxBps, TxRateBps: txBps}
}

// Manager gives VMs their host-side network: it owns the nftables table,
// the taps it made, a DNS resolver on the gateway address and the proxies of
// exposed ports. It is safe for concurrent use. Several Managers (one per
// supervisor process) may share a host: kernel objects are per VM and named
// so, and each Manager runs its own resolver port.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	pool   Pool
	leases Leases
	uplink string
	ns     nsRunner
	nl     *netlink.Handle
	table  *nftables.Table
	nft    nftSession
	res    *resolver

	mu  sync.Mutex
	vms map[string]*vmState
}

// vmState is what the Manager knows of one VM it set up.
type vmState struct {
	id    string
	tap   string
	ip    netip.Addr
	opts  VMOptions // Egress changes under Manager.mu
	gen   uint64    // bumped by each SetPolicy
	ports map[int]*exposure
}

// New checks cfg, opens netlink and nftables handles and starts the resolver.
// Close releases them.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	m, err := newManager(cfg)
	if err != nil {
		return nil, err
	}
	if err := m.open(ctx); err != nil {
		return nil, errors.Join(err, m.Close())
	}
	return m, nil
}

func newManager(cfg Config) (*Manager, error) {
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = DefaultSubnet
	}
	pool, err := NewPool(cfg.Subnet)
	if err != nil {
		return nil, err
	}
	if cfg.Table == "" {
		cfg.Table = "smolvm"
	}
	if cfg.Leases == nil {
		cfg.Leases = &MemLeases{}
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = 60 * time.Second
	}
	if cfg.PortRange == (Range{}) {
		cfg.PortRange = Range{Min: 20000, Max: 29999}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Manager{
		cfg: cfg, log: log, pool: pool, leases: cfg.Leases,
		table: &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet},
		vms:   make(map[string]*vmState),
	}, nil
}

func (m *Manager) open(ctx context.Context) error {
	var err error
	if m.ns, err = openNS(m.cfg.NetNS); err != nil {
		return err
	}
	m.nft.ns = m.ns
	if m.nl, err = m.netlinkHandle(); err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	if m.uplink = m.cfg.Uplink; m.uplink == "" {
		m.uplink = m.defaultRouteLink()
	}
	upstreams := m.cfg.Upstreams
	if len(upstreams) == 0 {
		if upstreams, err = readResolvConf(m.cfg.ResolvConf); err != nil {
			return err
		}
	}
	m.res, err = startResolver(ctx, m, upstreams)
	return err
}

func (m *Manager) netlinkHandle() (*netlink.Handle, error) {
	if m.ns.set {
		return netlink.NewHandleAt(m.ns.handle)
	}
	return netlink.NewHandle()
}

// defaultRouteLink names the link of the IPv4 default route, or "".
func (m *Manager) defaultRouteLink() string {
	routes, err := m.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, 0)
	if err != nil {
		m.log.Warn("list routes", "err", err)
		return ""
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
			if l, err := m.nl.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().Name
			}
		}
	}
	m.log.Warn("no IPv4 default route: masquerading to every non-smolvm interface")
	return ""
}

func isZeroMask(mask []byte) bool {
	for _, b := range mask {
		if b != 0 {
			return false
		}
	}
	return true
}

// Close stops the resolver and every port proxy and releases the handles.
// Kernel objects of VMs stay: VMs outlive the Manager; Teardown or Sweep
// removes them.
func (m *Manager) Close() error {
	var errs []error
	m.mu.Lock()
	for _, st := range m.vms {
		if st == nil {
			continue
		}
		for _, e := range st.ports {
			e.stop()
		}
	}
	m.mu.Unlock()
	if m.res != nil {
		errs = append(errs, m.res.close())
	}
	errs = append(errs, m.nft.close())
	if m.nl != nil {
		m.nl.Close()
	}
	errs = append(errs, m.ns.close())
	return errors.Join(errs...)
}

// Pool is the Manager's address pool.
func (m *Manager) Pool() Pool { return m.pool }

// flush runs fn to queue one batch on the Manager's nftables socket and
// sends it (see nftSession). fn must not call flush.
func (m *Manager) flush(fn func(c *nftables.Conn) error) error {
	return m.nft.batch(fn)
}
