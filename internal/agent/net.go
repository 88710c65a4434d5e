package agent

import (
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
	if err := writeResolvConf("/etc/resolv.conf", gn.DNS); err != nil {
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
