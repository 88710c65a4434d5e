package network

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Small builders for nftables expressions. Each returns the expressions of
// one match or action so rules read like the nft syntax in their comments.

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// meta iifname/oifname == name; prefix=true compares only the bytes of name
// (nft's "smolvm-*"), and neq negates.
func matchIfname(key expr.MetaKey, name string, prefix, neq bool) []expr.Any {
	data := ifname(name)
	if prefix {
		data = []byte(name)
	}
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func iif(name string) []expr.Any { return matchIfname(expr.MetaKeyIIFNAME, name, false, false) }
func oif(name string) []expr.Any { return matchIfname(expr.MetaKeyOIFNAME, name, false, false) }

// meta nfproto == proto
func matchNFProto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

const (
	offSaddr = 12
	offDaddr = 16
)

// ip saddr/daddr (offset) == addr, or != with neq. Includes the IPv4 check.
func matchAddr(off uint32, a netip.Addr, neq bool) []expr.Any {
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	b := a.As4()
	return append(matchNFProto(unix.NFPROTO_IPV4),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: b[:]},
	)
}

// ip saddr/daddr (offset) in prefix (or not in, with neq).
func matchPrefix(off uint32, p netip.Prefix, neq bool) []expr.Any {
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	b := p.Masked().Addr().As4()
	return append(matchNFProto(unix.NFPROTO_IPV4),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: b[:]},
	)
}

// ip daddr @set
func matchDaddrInSet(s *nftables.Set) []expr.Any {
	return append(matchNFProto(unix.NFPROTO_IPV4),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offDaddr, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	)
}

// meta l4proto proto th dport port
func matchDport(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// ct state established,related
func matchEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ct status dnat
func matchDNATed() []expr.Any {
	const ipsDstNAT = 1 << 5 // IPS_DST_NAT in nf_conntrack_common.h
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// fib daddr type local
func matchLocalDaddr() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// limit rate over bytesPerSec bytes/second burst burst bytes
func overRate(bytesPerSec uint64, burst uint32) []expr.Any {
	return []expr.Any{&expr.Limit{Type: expr.LimitTypePktBytes, Rate: bytesPerSec, Unit: expr.LimitTimeSecond, Over: true, Burst: burst}}
}

// redirect to :port
func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// dnat ip to addr:port
func dnatTo(a netip.Addr, port uint16) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: b[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

func masquerade() []expr.Any { return []expr.Any{&expr.Masq{}} }

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }
func drop() []expr.Any   { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }
func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

// rule joins expression groups into one rule's expressions.
func rule(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func comment(tag string) []byte { return userdata.AppendString(nil, userdata.TypeComment, tag) }

func commentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// intervalElements turns prefixes into interval-set elements, merging
// overlaps (the kernel refuses overlapping intervals).
func intervalElements(prefixes []netip.Prefix) []nftables.SetElement {
	type span struct{ lo, hi uint64 } // hi exclusive; uint64 so 2^32 fits
	spans := make([]span, 0, len(prefixes))
	for _, p := range prefixes {
		lo := uint64(addrToU32(p.Masked().Addr()))
		spans = append(spans, span{lo, lo + 1<<(32-p.Bits())})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	var merged []span
	for _, s := range spans {
		if n := len(merged); n > 0 && s.lo <= merged[n-1].hi {
			merged[n-1].hi = max(merged[n-1].hi, s.hi)
			continue
		}
		merged = append(merged, s)
	}
	var elems []nftables.SetElement
	for _, s := range merged {
		elems = append(elems, nftables.SetElement{Key: u32bytes(uint32(s.lo))})
		if s.hi <= 0xffffffff {
			elems = append(elems, nftables.SetElement{Key: u32bytes(uint32(s.hi)), IntervalEnd: true})
		}
	}
	return elems
}

func u32bytes(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
