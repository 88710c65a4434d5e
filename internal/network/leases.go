package network

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"sync"
)

// Kind names what a lease reserves.
type Kind string

// Lease kinds.
const (
	KindIP   Kind = "ip"   // an IPv4 guest address; Value is the address as a big-endian uint32
	KindPort Kind = "port" // a host TCP port; Value is the port number
)

// Lease is one value of one kind reserved for one VM.
type Lease struct {
	VMID  string
	Kind  Kind
	Value uint32
}

// Addr is an IP lease's address.
func (l Lease) Addr() netip.Addr { return u32ToAddr(l.Value) }

// Range is the closed interval [Min, Max] a lease is taken from.
type Range struct{ Min, Max uint32 }

// Leases records which VM holds which address and port. The store implements
// it over SQLite (one row per lease, unique on kind and value); MemLeases is
// the in-memory version for tests and one-process use. Implementations must be
// safe for concurrent use and atomic per call: two Acquires never return the
// same value.
type Leases interface {
	// Acquire reserves a value of kind for vmID. With want != 0 it reserves
	// exactly want (ErrLeaseTaken if another VM holds it; the same VM holding
	// it already is success); otherwise the lowest free value in r
	// (ErrExhausted when none is free).
	Acquire(ctx context.Context, vmID string, kind Kind, r Range, want uint32) (Lease, error)
	// Release drops a lease. Releasing a lease that is not held is not an error.
	Release(ctx context.Context, l Lease) error
	// List returns vmID's leases, or every lease when vmID is "", ordered by
	// kind then value.
	List(ctx context.Context, vmID string) ([]Lease, error)
}

// MemLeases is an in-memory Leases. The zero value is ready; it is safe for
// concurrent use.
type MemLeases struct {
	mu   sync.Mutex
	held map[Kind]map[uint32]string // kind -> value -> vm
}

// Acquire implements Leases.
func (m *MemLeases) Acquire(ctx context.Context, vmID string, kind Kind, r Range, want uint32) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held == nil {
		m.held = make(map[Kind]map[uint32]string)
	}
	byValue := m.held[kind]
	if byValue == nil {
		byValue = make(map[uint32]string)
		m.held[kind] = byValue
	}
	if want != 0 {
		if owner, ok := byValue[want]; ok && owner != vmID {
			return Lease{}, fmt.Errorf("lease %s %d: %w by %s", kind, want, ErrLeaseTaken, owner)
		}
		byValue[want] = vmID
		return Lease{VMID: vmID, Kind: kind, Value: want}, nil
	}
	for v := r.Min; v <= r.Max && v >= r.Min; v++ { // v >= r.Min stops a wrap at MaxUint32
		if _, ok := byValue[v]; !ok {
			byValue[v] = vmID
			return Lease{VMID: vmID, Kind: kind, Value: v}, nil
		}
	}
	return Lease{}, fmt.Errorf("lease %s in [%d, %d]: %w", kind, r.Min, r.Max, ErrExhausted)
}

// Release implements Leases.
func (m *MemLeases) Release(ctx context.Context, l Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if owner, ok := m.held[l.Kind][l.Value]; ok && owner == l.VMID {
		delete(m.held[l.Kind], l.Value)
	}
	return nil
}

// List implements Leases.
func (m *MemLeases) List(ctx context.Context, vmID string) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Lease
	for kind, byValue := range m.held {
		for v, owner := range byValue {
			if vmID == "" || owner == vmID {
				out = append(out, Lease{VMID: owner, Kind: kind, Value: v})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].Value < out[j].Value
	})
	return out, nil
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func u32ToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}
