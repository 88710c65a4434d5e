package network

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The table holds seven base chains that only dispatch: every rule in them
// matches one VM's tap (or one exposed port) and carries that VM's comment.
// Everything else lives in per-VM regular chains and sets, so one VM's
// objects are found, replaced and deleted by name without touching another's.
type baseChain struct {
	name string
	typ  nftables.ChainType
	hook *nftables.ChainHook
	prio *nftables.ChainPriority
}

var (
	basePre = baseChain{"pre", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw}
	// Forwarding is checked twice, from the sending VM's side and then the
	// receiving VM's, in two base chains: an accept ends only the base chain
	// it happens in, so one chain holding both jumps would let the first
	// VM chain that accepts skip the other VM's rules.
	baseFwdFrom = baseChain{"fwd-from-vm", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter}
	baseFwdTo   = baseChain{"fwd-to-vm", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityRef(1)}
	baseInput   = baseChain{"input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter}
	baseNATPre  = baseChain{"nat-pre", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest}
	baseNATOut  = baseChain{"nat-out", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest}
	baseNATPost = baseChain{"nat-post", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource}
	baseChains  = []baseChain{basePre, baseFwdFrom, baseFwdTo, baseInput, baseNATPre, baseNATOut, baseNATPost}
)

func (m *Manager) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: m.table}
}

// addSkeleton queues the table and its base chains; both are idempotent
// creates, so every batch that adds rules starts with them.
func (m *Manager) addSkeleton(c *nftables.Conn) {
	c.AddTable(m.table)
	policy := nftables.ChainPolicyAccept
	for _, b := range baseChains {
		c.AddChain(&nftables.Chain{Name: b.name, Table: m.table, Type: b.typ, Hooknum: b.hook, Priority: b.prio, Policy: &policy})
	}
}

// vmSets returns the VM's two sets, as objects to add or reference.
func (m *Manager) vmSets(id string) (cidr, dns *nftables.Set) {
	cidr = &nftables.Set{Table: m.table, Name: objName(id, setCIDR), KeyType: nftables.TypeIPAddr, Interval: true}
	dns = &nftables.Set{Table: m.table, Name: objName(id, setDNS), KeyType: nftables.TypeIPAddr, HasTimeout: true}
	return cidr, dns
}

// add queues one rule in chain, tagged with the comment tag.
func (m *Manager) add(c *nftables.Conn, chain, tag string, parts ...[]expr.Any) {
	c.AddRule(&nftables.Rule{Table: m.table, Chain: m.chain(chain), Exprs: rule(parts...), UserData: comment(tag)})
}

// addVM queues everything the VM needs in the table, and the table itself
// when withSkeleton (re-adding existing base chains costs the kernel an RCU
// grace period, ~10 ms, so Setup only does it when the table is missing).
func (m *Manager) addVM(c *nftables.Conn, st *vmState, withSkeleton bool) error {
	if withSkeleton {
		m.addSkeleton(c)
	}
	cidr, dns := m.vmSets(st.id)
	if err := c.AddSet(cidr, intervalElements(st.opts.Egress.CIDRs)); err != nil {
		return fmt.Errorf("add set %s: %w", cidr.Name, err)
	}
	if err := c.AddSet(dns, nil); err != nil {
		return fmt.Errorf("add set %s: %w", dns.Name, err)
	}
	for _, role := range []string{chainPre, chainOut, chainEgress, chainIn, chainHost} {
		c.AddChain(m.chain(objName(st.id, role)))
	}
	m.addVMChainRules(c, st)
	m.addEgressRules(c, st, cidr, dns)
	m.addBaseRules(c, st)
	return nil
}

// addVMChainRules fills the VM's fixed chains (everything but egress).
func (m *Manager) addVMChainRules(c *nftables.Conn, st *vmState) {
	id, gw, tag := st.id, m.pool.Gateway, ruleTag(st.id, 0)
	port := uint16(m.res.port)

	// pre (prerouting, before conntrack): no IPv6, no spoofed source, upload rate.
	pre := objName(id, chainPre)
	m.add(c, pre, tag, matchNFProto(unix.NFPROTO_IPV6), drop())
	m.add(c, pre, tag, matchAddr(offSaddr, st.ip, true), drop())
	if st.opts.RateMbps > 0 {
		bps := mbpsToBytes(st.opts.RateMbps)
		m.add(c, pre, tag, overRate(bps, burstBytes(bps)), drop())
	}

	// out (forward, from the guest): replies pass, other VMs are off limits,
	// then the egress policy decides.
	out := objName(id, chainOut)
	m.add(c, out, tag, matchEstablished(), accept())
	if !st.opts.AllowVMs {
		m.add(c, out, tag, matchPrefix(offDaddr, m.pool.Subnet, false), drop())
	}
	m.add(c, out, tag, jump(objName(id, chainEgress)))

	// in (forward, to the guest): replies, exposed ports (DNAT), and with
	// AllowVMs connections from other VMs; nothing else.
	in := objName(id, chainIn)
	m.add(c, in, tag, matchEstablished(), accept())
	m.add(c, in, tag, matchDNATed(), accept())
	if st.opts.AllowVMs {
		m.add(c, in, tag, matchPrefix(offSaddr, m.pool.Subnet, false), accept())
	}
	m.add(c, in, tag, drop())

	// host (input, from the guest to the host's own addresses): replies and
	// the resolver only, unless AllowHost.
	host := objName(id, chainHost)
	m.add(c, host, tag, matchEstablished(), accept())
	m.add(c, host, tag, matchAddr(offDaddr, gw, false), matchDport(unix.IPPROTO_UDP, port), accept())
	m.add(c, host, tag, matchAddr(offDaddr, gw, false), matchDport(unix.IPPROTO_TCP, port), accept())
	if st.opts.AllowHost {
		m.add(c, host, tag, accept())
	}
	m.add(c, host, tag, drop())
}

// addEgressRules fills the egress chain from the VM's policy.
func (m *Manager) addEgressRules(c *nftables.Conn, st *vmState, cidr, dns *nftables.Set) {
	egress, tag := objName(st.id, chainEgress), ruleTag(st.id, 0)
	switch st.opts.Egress.Mode {
	case "", EgressAllowAll:
		m.add(c, egress, tag, accept())
	case EgressDenyAll:
		m.add(c, egress, tag, drop())
	case EgressAllowlist:
		m.add(c, egress, tag, matchDaddrInSet(cidr), accept())
		m.add(c, egress, tag, matchDaddrInSet(dns), accept())
		m.add(c, egress, tag, drop())
	}
}

// addBaseRules hooks the VM's chains into the base chains and adds its NAT.
func (m *Manager) addBaseRules(c *nftables.Conn, st *vmState) {
	tap, tag, gw := st.tap, ruleTag(st.id, 0), m.pool.Gateway
	m.add(c, basePre.name, tag, iif(tap), jump(objName(st.id, chainPre)))
	m.add(c, baseFwdFrom.name, tag, iif(tap), jump(objName(st.id, chainOut)))
	m.add(c, baseFwdTo.name, tag, oif(tap), jump(objName(st.id, chainIn)))
	m.add(c, baseInput.name, tag, iif(tap), jump(objName(st.id, chainHost)))
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		m.add(c, baseNATPre.name, tag, iif(tap), matchAddr(offDaddr, gw, false), matchDport(proto, 53), redirectTo(uint16(m.res.port)))
	}
	if m.uplink != "" {
		m.add(c, baseNATPost.name, tag, matchAddr(offSaddr, st.ip, false), oif(m.uplink), masquerade())
	} else {
		m.add(c, baseNATPost.name, tag, matchAddr(offSaddr, st.ip, false),
			matchIfname(expr.MetaKeyOIFNAME, TapPrefix, true, true), masquerade())
	}
}

// addExposeRules queues the DNAT rules of one port exposure: from other
// hosts (prerouting, never from a VM's tap) and from this host's own
// non-loopback addresses (output). Loopback is the proxy's job.
func (m *Manager) addExposeRules(c *nftables.Conn, st *vmState, e Exposure) {
	tag := ruleTag(st.id, e.HostPort)
	dst := matchLocalDaddr()
	if a := netip.MustParseAddr(e.Address); !a.IsUnspecified() {
		dst = matchAddr(offDaddr, a, false)
	}
	dport := matchDport(unix.IPPROTO_TCP, uint16(e.HostPort))
	to := dnatTo(st.ip, uint16(e.GuestPort))
	notVM := matchIfname(expr.MetaKeyIIFNAME, TapPrefix, true, true)
	m.add(c, baseNATPre.name, tag, notVM, dst, dport, to)
	notLoopback := matchPrefix(offDaddr, netip.MustParsePrefix("127.0.0.0/8"), true)
	m.add(c, baseNATOut.name, tag, dst, notLoopback, dport, to)
}

// tagged lists the rules in base chains whose comment names a VM.
type taggedRule struct {
	rule *nftables.Rule
	vmID string
	port int
}

// listTagged returns every tagged rule of the base chains; missing chains
// (or table) hold none.
func (m *Manager) listTagged(c *nftables.Conn) ([]taggedRule, error) {
	var out []taggedRule
	for _, b := range baseChains {
		rules, err := c.GetRules(m.table, m.chain(b.name))
		if err != nil {
			if isNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("list rules of chain %s: %w", b.name, err)
		}
		for _, r := range rules {
			if id, port, ok := vmOfTag(commentOf(r)); ok {
				out = append(out, taggedRule{r, id, port})
			}
		}
	}
	return out, nil
}

// delVM queues deletion of every object of vmIDs (all of their base-chain
// rules, chains and sets) found in the kernel. It returns how many objects
// it queued.
func (m *Manager) delVM(c *nftables.Conn, vmIDs map[string]bool) (int, error) {
	tagged, err := m.listTagged(c)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range tagged {
		if vmIDs[t.vmID] {
			if err := c.DelRule(t.rule); err != nil {
				return 0, fmt.Errorf("delete rule %d: %w", t.rule.Handle, err)
			}
			n++
		}
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return 0, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if id, ok := vmOfObject(ch.Name); ok && ch.Table.Name == m.table.Name && vmIDs[id] {
			c.FlushChain(ch)
			c.DelChain(ch)
			n++
		}
	}
	sets, err := c.GetSets(m.table)
	if err != nil && !isNotExist(err) {
		return 0, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		if id, ok := vmOfObject(s.Name); ok && vmIDs[id] {
			c.DelSet(s)
			n++
		}
	}
	return n, nil
}

// delExposeRules queues deletion of one exposure's DNAT rules.
func (m *Manager) delExposeRules(c *nftables.Conn, vmID string, hostPort int) error {
	tagged, err := m.listTagged(c)
	if err != nil {
		return err
	}
	for _, t := range tagged {
		if t.vmID == vmID && t.port == hostPort {
			if err := c.DelRule(t.rule); err != nil {
				return fmt.Errorf("delete rule %d: %w", t.rule.Handle, err)
			}
		}
	}
	return nil
}

func isNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT)
}

// mbpsToBytes converts megabits per second to bytes per second.
func mbpsToBytes(mbps int) uint64 { return uint64(mbps) * 1_000_000 / 8 }

// burstBytes is the bucket size for a rate: 10 ms worth, at least 64 KiB so
// one TSO burst fits.
func burstBytes(bytesPerSec uint64) uint32 { return uint32(max(bytesPerSec/100, 64<<10)) }
