package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
)

// setupLink makes the VM's host link (a new tap, or the adopted link renamed
// to the tap name), gives it the gateway address, a /32 route to the guest
// and the download rate limit. The link records its VM in its alias.
func (m *Manager) setupLink(st *vmState) error {
	if _, err := m.nl.LinkByName(st.tap); err == nil {
		return fmt.Errorf("link %s: %w", st.tap, ErrExists)
	}
	link, err := m.makeLink(st)
	if err != nil {
		return err
	}
	if err := m.nl.LinkSetAlias(link, aliasPrefix+st.id); err != nil {
		return fmt.Errorf("set alias of %s: %w", st.tap, err)
	}
	m.disableIPv6(st.tap)
	gw := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(m.pool.Gateway, 32))}
	if err := m.nl.AddrAdd(link, gw); err != nil {
		return fmt.Errorf("add address %s to %s: %w", m.pool.Gateway, st.tap, err)
	}
	if err := m.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", st.tap, err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(netip.PrefixFrom(st.ip, 32)),
		Src:       net.IP(m.pool.Gateway.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
	}
	if err := m.nl.RouteAdd(route); err != nil {
		return fmt.Errorf("add route %s dev %s: %w", st.ip, st.tap, err)
	}
	if st.opts.RateMbps > 0 {
		if err := m.nl.QdiscReplace(tbf(link.Attrs().Index, mbpsToBytes(st.opts.RateMbps))); err != nil {
			return fmt.Errorf("add tbf qdisc to %s: %w", st.tap, err)
		}
	}
	return nil
}

// makeLink creates the tap, or renames the link to adopt; the tap must be
// created from a thread inside the namespace (it comes from /dev/net/tun).
func (m *Manager) makeLink(st *vmState) (netlink.Link, error) {
	if name := st.opts.Link; name != "" {
		l, err := m.nl.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("find link %s: %w", name, err)
		}
		if err := m.nl.LinkSetDown(l); err != nil {
			return nil, fmt.Errorf("set %s down: %w", name, err)
		}
		if err := m.nl.LinkSetName(l, st.tap); err != nil {
			return nil, fmt.Errorf("rename %s to %s: %w", name, st.tap, err)
		}
		return m.nl.LinkByName(st.tap)
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: st.tap},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := m.ns.do(func() error { return m.nl.LinkAdd(tap) }); err != nil {
		return nil, fmt.Errorf("create tap %s: %w", st.tap, err)
	}
	return m.nl.LinkByName(st.tap)
}

// tbf shapes host-to-guest traffic to bytesPerSec, queueing at most ~50 ms.
func tbf(linkIndex int, bytesPerSec uint64) *netlink.Tbf {
	burst := burstBytes(bytesPerSec)
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: linkIndex, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       bytesPerSec,
		Limit:      uint32(bytesPerSec/20) + burst,
		Buffer:     netlink.Xmittime(bytesPerSec, burst),
	}
}

// disableIPv6 keeps the tap free of IPv6 link-local addresses: guests get
// IPv4 only, and a link-local address would be a way around the filters.
func (m *Manager) disableIPv6(tap string) {
	err := m.ns.writeSysctl("net/ipv6/conf/"+tap+"/disable_ipv6", "1")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("disable IPv6 on tap", "tap", tap, "err", err)
	}
}

// enableForwarding turns on IPv4 forwarding, which routing guests needs.
func (m *Manager) enableForwarding() error {
	var cur []byte
	err := m.ns.do(func() error {
		var err error
		cur, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	})
	if err != nil {
		return fmt.Errorf("read ip_forward: %w", err)
	}
	if strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	m.log.Info("enabling IPv4 forwarding (net.ipv4.ip_forward=1)")
	if err := m.ns.writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	return nil
}

// deleteLink removes the VM's link if it exists; addresses, routes and
// qdiscs go with it.
func (m *Manager) deleteLink(tap string) error {
	l, err := m.nl.LinkByName(tap)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", tap, err)
	}
	if err := m.nl.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s: %w", tap, err)
	}
	return nil
}

// smolvmLinks maps each smolvm-named link to the VM in its alias ("" when
// the alias is missing or foreign).
func (m *Manager) smolvmLinks() (map[string]string, error) {
	links, err := m.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[string]string{}
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, TapPrefix) {
			continue
		}
		id, _ := strings.CutPrefix(a.Alias, aliasPrefix)
		if checkVMID(id) != nil || TapName(id) != a.Name {
			id = ""
		}
		out[a.Name] = id
	}
	return out, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
