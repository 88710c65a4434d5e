package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/network"
)

// nicWait bounds the wait for the network device to appear after its
// driver (virtio_net) was loaded.
const nicWait = 5 * time.Second

// setupNetwork configures the guest's NIC from the smolvm.ip/gw/dns
// parameters of the kernel command line (network.GuestCmdline, or QEMU's
// user-mode addresses): the NIC whose MAC is network.GuestMAC of the
// address gets the address, a link route to the gateway (which may lie
// outside a /32) and a default route through it; /etc/resolv.conf of the
// root names the resolver. Without the parameters the network stays down.
func (b *boot) setupNetwork() (string, error) {
	gn, ok, err := network.ParseGuestCmdline(b.cmdline)
	if err != nil {
		return "", err
	}
	if !ok {
		return "no network configured", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), nicWait)
	defer cancel()
	link, err := findNIC(ctx, network.GuestMAC(gn.IP.Addr()))
	if err != nil {
		return "", err
	}
	if err := configureNIC(link, gn); err != nil {
		return "", err
	}
	if err := guestResolvConf().set(gn.DNS); err != nil {
		// A root that cannot take it still has a working network by address.
		b.log.Warn("writing /etc/resolv.conf", "err", err)
	}
	return fmt.Sprintf("network %s on %s via %s, dns %s", gn.IP, link.Attrs().Name, gn.Gateway, gn.DNS), nil
}

// findNIC waits for the link with the MAC the host gave the guest; with a
// different MAC, the only non-loopback Ethernet link will do.
func findNIC(ctx context.Context, mac string) (netlink.Link, error) {
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("listing links: %w", err)
		}
		if l := pickNIC(links, mac); l != nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no network device with MAC %s appeared within %v (links: %s; is virtio_net loaded?)",
				mac, nicWait, linkNames(links))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// pickNIC is the link whose address is mac, else the only Ethernet link
// that is not loopback, else nil.
func pickNIC(links []netlink.Link, mac string) netlink.Link {
	var ether []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || len(a.HardwareAddr) != 6 {
			continue
		}
		if strings.EqualFold(a.HardwareAddr.String(), mac) {
			return l
		}
		ether = append(ether, l)
	}
	if len(ether) == 1 {
		return ether[0]
	}
	return nil
}

func linkNames(links []netlink.Link) string {
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return strings.Join(names, " ")
}

// configureNIC sets link up with gn's address, then "ip route add GW dev
// NIC" and "ip route add default via GW". Routes that exist already (the
// gateway inside a /24) are fine.
func configureNIC(link netlink.Link, gn network.GuestNet) error {
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: prefixNet(gn.IP)}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", gn.IP, name, err)
	}
	idx := link.Attrs().Index
	routes := []*netlink.Route{
		{LinkIndex: idx, Dst: prefixNet(netip.PrefixFrom(gn.Gateway, 32)), Scope: netlink.SCOPE_LINK},
		{LinkIndex: idx, Gw: net.IP(gn.Gateway.AsSlice())},
	}
	for _, r := range routes {
		if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding route %s on %s: %w", r, name, err)
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// resolvConf is where the guest's resolver is named: etc, the path
// programs read, and run, a file on the /run tmpfs that the agent owns.
type resolvConf struct {
	etc, run string
	bind     func(src, dst string) error // bind-mounts src over dst
}

func guestResolvConf() resolvConf {
	return resolvConf{etc: "/etc/resolv.conf", run: "/run/smolvm/resolv.conf", bind: bindMount}
}

func bindMount(src, dst string) error { return unix.Mount(src, dst, "", unix.MS_BIND, "") }

// set names dns as the only nameserver. It writes r.run and, when r.etc is
// a regular file, bind-mounts it there (as docker does): the root disk is
// not written, which under emulation saves tens of milliseconds of file
// system work at boot, and the image keeps its own file. A later call
// (a restored clone's new resolver) rewrites r.run in place. When r.etc is
// missing or a symlink, or the bind fails, r.etc itself is written
// (writeResolvConf).
func (r resolvConf) set(dns netip.Addr) error {
	content := "nameserver " + dns.String() + "\n"
	if err := writeInPlace(r.run, content); err != nil {
		return writeResolvConf(r.etc, dns)
	}
	fi, err := os.Lstat(r.etc)
	if err != nil || !fi.Mode().IsRegular() {
		return writeResolvConf(r.etc, dns)
	}
	if sameFile(r.etc, r.run) {
		return nil // bound already: the new content is in place
	}
	if err := r.bind(r.run, r.etc); err != nil {
		return writeResolvConf(r.etc, dns)
	}
	return nil
}

// writeInPlace writes content to path, creating it (and its directory) if
// needed, without replacing the file: a bind mount of it sees the change.
func writeInPlace(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(content)
	return errors.Join(werr, f.Close())
}

// sameFile says whether a and b are the same file (a bind mount of b is).
func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// writeResolvConf makes path a regular file naming dns as the only
// nameserver. A symlink there (to a resolver daemon's file) is replaced,
// never written through.
func writeResolvConf(path string, dns netip.Addr) error {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".smolvm"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.WriteString("nameserver " + dns.String() + "\n")
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// renumber gives the guest a clone's network identity after a restore:
// the NIC that held the snapshot's identity (see pickRenumberNIC) takes
// mac and gn's address and routes (renumberNIC); /etc/resolv.conf names
// gn's resolver. It returns the NIC's name.
func renumber(gn network.GuestNet, mac net.HardwareAddr) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", fmt.Errorf("listing links: %w", err)
	}
	link := pickRenumberNIC(links, mac, linkAddrs)
	if link == nil {
		return "", fmt.Errorf("no network device to give %s (links: %s)", gn.IP, linkNames(links))
	}
	if err := renumberNIC(link, mac, gn); err != nil {
		return "", err
	}
	return link.Attrs().Name, nil
}

// linkAddrs lists the IPv4 addresses on link (none when that fails).
func linkAddrs(link netlink.Link) []netip.Addr {
	addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			out = append(out, ip)
		}
	}
	return out
}

// pickRenumberNIC is the link to renumber: the one whose MAC is mac
// already, else the one carrying an address whose network.GuestMAC is its
// MAC (the identity a smolvm host gave it before the snapshot), else the
// only non-loopback Ethernet link, else nil.
func pickRenumberNIC(links []netlink.Link, mac net.HardwareAddr, addrs func(netlink.Link) []netip.Addr) netlink.Link {
	var ether []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || len(a.HardwareAddr) != 6 {
			continue
		}
		if bytes.Equal(a.HardwareAddr, mac) {
			return l
		}
		ether = append(ether, l)
	}
	for _, l := range ether {
		for _, ip := range addrs(l) {
			if strings.EqualFold(network.GuestMAC(ip), l.Attrs().HardwareAddr.String()) {
				return l
			}
		}
	}
	if len(ether) == 1 {
		return ether[0]
	}
	return nil
}

// renumberNIC moves a configured link to a new identity: MAC mac (when it
// differs), gn's address in place of every other IPv4 address, routes
// rebuilt by configureNIC, and no neighbour entries (the gateway's MAC is
// a new tap's). Routes the kernel made for an address go with it; the
// others on link are deleted first.
func renumberNIC(link netlink.Link, mac net.HardwareAddr, gn network.GuestNet) error {
	name := link.Attrs().Name
	if !bytes.Equal(link.Attrs().HardwareAddr, mac) {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("setting the MAC of %s to %s: %w", name, mac, err)
		}
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing routes on %s: %w", name, err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("deleting route %s on %s: %w", r, name, err)
		}
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing addresses on %s: %w", name, err)
	}
	want := prefixNet(gn.IP).String()
	for _, a := range addrs {
		if a.IPNet.String() == want {
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("deleting address %s from %s: %w", a.IPNet, name, err)
		}
	}
	if err := flushNeighbours(link); err != nil {
		return err
	}
	return configureNIC(link, gn)
}

// flushNeighbours deletes link's IPv4 neighbour (ARP) entries.
func flushNeighbours(link netlink.Link) error {
	neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing neighbours on %s: %w", link.Attrs().Name, err)
	}
	for _, n := range neighs {
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting neighbour %s on %s: %w", n.IP, link.Attrs().Name, err)
		}
	}
	return nil
}
