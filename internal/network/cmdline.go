package network

import (
	"fmt"
	"net/netip"
	"strings"
)

// Kernel command line parameters that carry a tap-mode guest's network to
// the guest agent. The agent, as PID 1, must for a command line holding them:
//
//  1. bring up "lo";
//  2. find the NIC whose MAC is GuestMAC(ip) (with one NIC, eth0), set it up;
//  3. add the address smolvm.ip (always a /32) to it;
//  4. add a link-scope route to smolvm.gw on that NIC, then a default route
//     via smolvm.gw (the gateway is outside the /32, hence the scoped route
//     first — "ip route add GW dev eth0; ip route add default via GW");
//  5. write "nameserver <smolvm.dns>" to /etc/resolv.conf of the new root.
//
// Without them (mode "none", or "user" where QEMU's DHCP serves the guest)
// the agent leaves the network to DHCP or down. ParseGuestCmdline reads them.
const (
	CmdlineIP      = "smolvm.ip"  // guest address with prefix, e.g. 172.16.0.2/32
	CmdlineGateway = "smolvm.gw"  // gateway address, e.g. 172.16.0.1
	CmdlineDNS     = "smolvm.dns" // resolver address, e.g. 172.16.0.1
)

// GuestNet is the guest's side of a tap attachment.
type GuestNet struct {
	IP      netip.Prefix // always /32
	Gateway netip.Addr
	DNS     netip.Addr
}

// GuestCmdline is the kernel command line fragment for a, space-separated,
// to append to the VM's command line.
func GuestCmdline(a *Attachment) string {
	return fmt.Sprintf("%s=%s %s=%s %s=%s",
		CmdlineIP, netip.PrefixFrom(a.GuestIP, 32),
		CmdlineGateway, a.Gateway,
		CmdlineDNS, a.DNS)
}

// ParseGuestCmdline finds the smolvm.* network parameters in a kernel
// command line. ok is false when smolvm.ip is absent; an error means a
// parameter is present but malformed or the set is incomplete.
func ParseGuestCmdline(cmdline string) (n GuestNet, ok bool, err error) {
	vals := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case CmdlineIP, CmdlineGateway, CmdlineDNS:
			vals[k] = v
		}
	}
	ip, hasIP := vals[CmdlineIP]
	if !hasIP {
		return GuestNet{}, false, nil
	}
	if n.IP, err = netip.ParsePrefix(ip); err != nil || !n.IP.Addr().Is4() {
		return GuestNet{}, false, fmt.Errorf("%w: %s=%q: want an IPv4 address/prefix", ErrInvalid, CmdlineIP, ip)
	}
	for key, dst := range map[string]*netip.Addr{CmdlineGateway: &n.Gateway, CmdlineDNS: &n.DNS} {
		a, err := netip.ParseAddr(vals[key])
		if err != nil || !a.Is4() {
			return GuestNet{}, false, fmt.Errorf("%w: %s=%q: want an IPv4 address", ErrInvalid, key, vals[key])
		}
		*dst = a
	}
	return n, true, nil
}
