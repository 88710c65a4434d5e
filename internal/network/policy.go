package network

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Egress modes a Policy can have.
const (
	EgressAllowAll  = "allow-all" // any destination outside the host and other VMs
	EgressDenyAll   = "deny-all"  // nothing leaves the VM; DNS answers REFUSED
	EgressAllowlist = "allowlist" // only Policy.CIDRs and addresses of Policy.Domains
)

// Policy is a VM's egress policy. The zero value allows all.
//
// Domains are lower-case names without a trailing dot. "example.org" matches
// that name only; "*.example.org" matches every name below it
// ("a.example.org", "a.b.example.org") but not "example.org" itself — list
// both to allow both.
type Policy struct {
	Mode    string
	CIDRs   []netip.Prefix
	Domains []string
}

// ParsePolicy builds a Policy from a mode ("" = allow-all) and allow entries,
// each a CIDR ("10.0.0.0/8"), a single IPv4 address, a domain or a wildcard
// domain ("*.example.org"). Entries are only accepted with the allowlist mode.
func ParsePolicy(mode string, allow []string) (Policy, error) {
	if mode == "" {
		mode = EgressAllowAll
	}
	p := Policy{Mode: mode}
	switch mode {
	case EgressAllowAll, EgressDenyAll:
		if len(allow) > 0 {
			return Policy{}, fmt.Errorf("%w: egress %s takes no allow entries (use %s)", ErrInvalid, mode, EgressAllowlist)
		}
		return p, nil
	case EgressAllowlist:
	default:
		return Policy{}, fmt.Errorf("%w: egress mode %q (want %s, %s or %s)", ErrInvalid, mode, EgressAllowAll, EgressDenyAll, EgressAllowlist)
	}
	for _, entry := range allow {
		if err := p.add(entry); err != nil {
			return Policy{}, err
		}
	}
	return p, nil
}

func (p *Policy) add(entry string) error {
	entry = strings.TrimSpace(entry)
	if pfx, err := netip.ParsePrefix(entry); err == nil {
		if !pfx.Addr().Is4() {
			return fmt.Errorf("%w: allow %q: only IPv4 prefixes (guests have no IPv6)", ErrInvalid, entry)
		}
		p.CIDRs = append(p.CIDRs, pfx.Masked())
		return nil
	}
	if a, err := netip.ParseAddr(entry); err == nil {
		if !a.Is4() {
			return fmt.Errorf("%w: allow %q: only IPv4 addresses (guests have no IPv6)", ErrInvalid, entry)
		}
		p.CIDRs = append(p.CIDRs, netip.PrefixFrom(a, 32))
		return nil
	}
	name, err := normalizeDomain(entry)
	if err != nil {
		return err
	}
	p.Domains = append(p.Domains, name)
	return nil
}

// Validate checks a Policy built by hand.
func (p Policy) Validate() error {
	mode := p.Mode
	if mode == "" {
		mode = EgressAllowAll
	}
	entries := make([]string, 0, len(p.CIDRs)+len(p.Domains))
	for _, c := range p.CIDRs {
		entries = append(entries, c.String())
	}
	entries = append(entries, p.Domains...)
	_, err := ParsePolicy(mode, entries)
	return err
}

// normalizeDomain lower-cases name, drops one trailing dot, and checks it is
// a host name or "*." followed by one.
func normalizeDomain(name string) (string, error) {
	n := strings.TrimSuffix(strings.ToLower(name), ".")
	host := strings.TrimPrefix(n, "*.")
	if host == "" || len(n) > 253 || strings.Contains(host, "*") {
		return "", fmt.Errorf("%w: allow %q: not a CIDR, address or domain", ErrInvalid, name)
	}
	for _, label := range strings.Split(host, ".") {
		if !validLabel(label) {
			return "", fmt.Errorf("%w: allow %q: not a CIDR, address or domain", ErrInvalid, name)
		}
	}
	return n, nil
}

func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for _, c := range l {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			return false
		}
	}
	return true
}

// AllowsName says whether the resolver may answer queries for name (a DNS
// question name, any case, with or without the trailing dot).
func (p Policy) AllowsName(name string) bool {
	switch p.Mode {
	case "", EgressAllowAll:
		return true
	case EgressDenyAll:
		return false
	}
	n := strings.TrimSuffix(strings.ToLower(name), ".")
	return slices.ContainsFunc(p.Domains, func(d string) bool { return domainMatch(d, n) })
}

// domainMatch matches one normalized pattern against one normalized name.
func domainMatch(pattern, name string) bool {
	if parent, ok := strings.CutPrefix(pattern, "*."); ok {
		return strings.HasSuffix(name, "."+parent)
	}
	return pattern == name
}

// String is the policy as a user would type it.
func (p Policy) String() string {
	mode := p.Mode
	if mode == "" {
		mode = EgressAllowAll
	}
	if mode != EgressAllowlist {
		return mode
	}
	parts := make([]string, 0, len(p.CIDRs)+len(p.Domains))
	for _, c := range p.CIDRs {
		parts = append(parts, c.String())
	}
	parts = append(parts, p.Domains...)
	return mode + ":" + strings.Join(parts, ",")
}
