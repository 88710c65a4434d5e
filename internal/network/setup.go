package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// Setup gives vmID its network: an address lease, the tap, its nftables
// chains and sets, and a place in the resolver. On any error it removes
// everything it made and returns the error. ctx bounds the lease calls;
// the kernel calls are quick and not interruptible.
func (m *Manager) Setup(ctx context.Context, vmID string, opts VMOptions) (*Attachment, error) {
	if err := checkVMID(vmID); err != nil {
		return nil, err
	}
	if err := opts.Egress.Validate(); err != nil {
		return nil, err
	}
	if opts.RateMbps < 0 {
		return nil, fmt.Errorf("%w: rate %d Mbit/s is negative", ErrInvalid, opts.RateMbps)
	}
	m.mu.Lock()
	_, exists := m.vms[vmID]
	if !exists {
		m.vms[vmID] = nil // reserved while setting up
	}
	m.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("network of vm %s: %w", vmID, ErrExists)
	}
	tap := TapName(vmID)
	if _, err := m.nl.LinkByName(tap); err == nil {
		m.mu.Lock()
		delete(m.vms, vmID)
		m.mu.Unlock()
		return nil, fmt.Errorf("network of vm %s: link %s: %w", vmID, tap, ErrExists)
	}
	st, err := m.setup(ctx, vmID, tap, opts)
	if err != nil {
		rbErr := m.remove(context.WithoutCancel(ctx), vmID)
		return nil, errors.Join(fmt.Errorf("set up network of vm %s: %w", vmID, err), rbErr)
	}
	m.log.Debug("network set up", "vm", vmID, "tap", tap, "ip", st.ip, "egress", opts.Egress.String())
	return &Attachment{
		VMID: vmID, Tap: tap, MAC: GuestMAC(st.ip),
		GuestIP: st.ip, Gateway: m.pool.Gateway, DNS: m.pool.Gateway,
	}, nil
}

func (m *Manager) setup(ctx context.Context, vmID, tap string, opts VMOptions) (*vmState, error) {
	lease, err := m.acquireIP(ctx, vmID)
	if err != nil {
		return nil, fmt.Errorf("lease address: %w", err)
	}
	st := &vmState{id: vmID, tap: tap, ip: lease.Addr(), opts: opts, ports: map[int]*exposure{}}
	if err := m.enableForwarding(); err != nil {
		return nil, err
	}
	if err := m.setupLink(st); err != nil {
		return nil, err
	}
	if err := m.addVMRules(st); err != nil {
		return nil, fmt.Errorf("add nftables rules: %w", err)
	}
	m.mu.Lock()
	m.vms[vmID] = st
	m.mu.Unlock()
	return st, nil
}

// maxRoutedSkips bounds how many leased addresses acquireIP passes over.
const maxRoutedSkips = 32

// acquireIP leases the lowest address that is free both in the lease table
// and in the kernel: another smolvm on the host, with a data dir (and lease
// table) of its own, may already route an address of the pool.
func (m *Manager) acquireIP(ctx context.Context, vmID string) (Lease, error) {
	var skipped []Lease
	defer func() {
		for _, l := range skipped {
			m.leases.Release(ctx, l)
		}
	}()
	for range maxRoutedSkips {
		l, err := m.leases.Acquire(ctx, vmID, KindIP, m.pool.GuestRange(), 0)
		if err != nil || !m.routed(l.Addr()) {
			return l, err
		}
		m.log.Warn("address routed by another smolvm, skipping", "vm", vmID, "ip", l.Addr())
		skipped = append(skipped, l)
	}
	return Lease{}, fmt.Errorf("%d addresses in a row are routed by another smolvm on this host: %w", maxRoutedSkips, ErrExhausted)
}

// routed reports whether the kernel has a route for exactly ip/32.
func (m *Manager) routed(ip netip.Addr) bool {
	filter := &netlink.Route{Dst: ipNet(netip.PrefixFrom(ip, 32))}
	routes, err := m.nl.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_DST)
	return err == nil && len(routes) > 0
}

// addVMRules adds the VM's nftables objects, with the table skeleton only
// if it is missing: first without it, and again with it on ENOENT.
func (m *Manager) addVMRules(st *vmState) error {
	err := m.flush(func(c *nftables.Conn) error { return m.addVM(c, st, false) })
	if err == nil || !isNotExist(err) {
		return err
	}
	return m.flush(func(c *nftables.Conn) error { return m.addVM(c, st, true) })
}

// Teardown removes vmID's network: port proxies, nftables objects, the link
// and its leases. It works from kernel state and leases alone, so it also
// cleans a VM set up by another (perhaps dead) process. It is idempotent.
func (m *Manager) Teardown(ctx context.Context, vmID string) error {
	if err := checkVMID(vmID); err != nil {
		return err
	}
	if err := m.remove(ctx, vmID); err != nil {
		return fmt.Errorf("tear down network of vm %s: %w", vmID, err)
	}
	return nil
}

// remove deletes everything of vmID that exists, going on past errors.
func (m *Manager) remove(ctx context.Context, vmID string) error {
	m.mu.Lock()
	st := m.vms[vmID]
	delete(m.vms, vmID)
	m.mu.Unlock()
	if st != nil {
		for _, e := range st.ports {
			e.stop()
		}
	}
	// Deleting the link waits for an RCU grace period in the kernel (15-19
	// ms here, see doc.go); the nftables batch is independent and takes ~1
	// ms, so it runs while the link goes.
	linkErr := make(chan error, 1)
	go func() { linkErr <- m.deleteLink(TapName(vmID)) }()
	var errs []error
	err := m.flush(func(c *nftables.Conn) error {
		_, err := m.delVM(c, map[string]bool{vmID: true})
		return err
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("delete nftables objects: %w", err))
	}
	errs = append(errs, <-linkErr)
	errs = append(errs, m.releaseLeases(ctx, vmID, nil))
	return errors.Join(errs...)
}

// releaseLeases releases vmID's leases for which keep is nil or false.
func (m *Manager) releaseLeases(ctx context.Context, vmID string, keep func(Lease) bool) error {
	leases, err := m.leases.List(ctx, vmID)
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	var errs []error
	for _, l := range leases {
		if keep == nil || !keep(l) {
			errs = append(errs, m.leases.Release(ctx, l))
		}
	}
	return errors.Join(errs...)
}

// SetPolicy replaces vmID's egress policy. The new rules and allowlist
// replace the old ones in one atomic batch; addresses the resolver added
// under the old policy are forgotten. Connections already established stay
// up until they close (conntrack keeps them; only new ones are checked).
func (m *Manager) SetPolicy(ctx context.Context, vmID string, p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.vms[vmID]
	if st == nil {
		return fmt.Errorf("set policy of vm %s: %w", vmID, ErrNotFound)
	}
	next := *st
	next.opts.Egress = p
	err := m.flush(func(c *nftables.Conn) error {
		cidr, dns := m.vmSets(vmID)
		c.FlushChain(m.chain(objName(vmID, chainEgress)))
		c.FlushSet(cidr)
		c.FlushSet(dns)
		if elems := intervalElements(p.CIDRs); len(elems) > 0 {
			if err := c.SetAddElements(cidr, elems); err != nil {
				return err
			}
		}
		m.addEgressRules(c, &next, cidr, dns)
		return nil
	})
	if err != nil {
		return fmt.Errorf("set policy of vm %s: %w", vmID, err)
	}
	st.opts.Egress = p
	st.gen++
	m.log.Info("egress policy changed", "vm", vmID, "egress", p.String())
	return nil
}

// policyOf finds the VM with guest address ip and returns its ID, policy
// and policy generation.
func (m *Manager) policyOf(ip netip.Addr) (string, Policy, uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, st := range m.vms {
		if st != nil && st.ip == ip {
			return st.id, st.opts.Egress, st.gen, true
		}
	}
	return "", Policy{}, 0, false
}

// errPolicyChanged means the policy changed while a DNS answer was in flight.
var errPolicyChanged = errors.New("egress policy changed during the query")

// allowAddrs adds resolver answers to vmID's set, if the policy is still
// generation gen.
func (m *Manager) allowAddrs(vmID string, gen uint64, elems []nftables.SetElement) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.vms[vmID]
	if st == nil || st.gen != gen {
		return errPolicyChanged
	}
	_, dns := m.vmSets(vmID)
	return m.flush(func(c *nftables.Conn) error { return c.SetAddElements(dns, elems) })
}
