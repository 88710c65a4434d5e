package network

import (
	"fmt"
	"net/netip"
)

// DefaultSubnet is the guest address pool when Config.Subnet is unset: the
// first address is the host side (gateway and DNS), guests get the rest
// except the broadcast address.
var DefaultSubnet = netip.MustParsePrefix("172.16.0.0/24")

// Pool is an IPv4 subnet split into one gateway address and guest addresses.
type Pool struct {
	Subnet  netip.Prefix
	Gateway netip.Addr // first usable address (.1 in a /24)
}

// NewPool checks subnet (IPv4, /16 to /29, network address given) and
// returns its pool.
func NewPool(subnet netip.Prefix) (Pool, error) {
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return Pool{}, fmt.Errorf("%w: subnet %s is not IPv4", ErrInvalid, subnet)
	}
	if subnet.Bits() < 16 || subnet.Bits() > 29 {
		return Pool{}, fmt.Errorf("%w: subnet %s: prefix length must be 16 to 29", ErrInvalid, subnet)
	}
	if subnet.Masked() != subnet {
		return Pool{}, fmt.Errorf("%w: subnet %s has host bits set (did you mean %s?)", ErrInvalid, subnet, subnet.Masked())
	}
	return Pool{Subnet: subnet, Gateway: subnet.Addr().Next()}, nil
}

// GuestRange is the lease range of guest addresses: gateway+1 up to the
// address before broadcast.
func (p Pool) GuestRange() Range {
	first := addrToU32(p.Gateway) + 1
	size := uint32(1) << (32 - p.Subnet.Bits())
	last := addrToU32(p.Subnet.Addr()) + size - 2
	return Range{Min: first, Max: last}
}

// Contains says whether a is a guest address of the pool.
func (p Pool) Contains(a netip.Addr) bool {
	r := p.GuestRange()
	v := addrToU32(a)
	return a.Is4() && v >= r.Min && v <= r.Max
}

// GuestMAC is the MAC address smolvm gives the guest with address a: locally
// administered, unicast, 06:00 and then the four address bytes.
func GuestMAC(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("06:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}
