package supervisor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// NetLeases is network.Leases over the SQLite store: one row per lease,
// unique on kind and value across every process that opens the database,
// and deleted with its VM's row. Addresses are stored dotted ("172.16.0.2"),
// ports and other values in decimal.
func NetLeases(st *store.Store) network.Leases { return storeLeases{st} }

type storeLeases struct{ st *store.Store }

// Acquire implements network.Leases.
func (l storeLeases) Acquire(ctx context.Context, vmID string, kind network.Kind, r network.Range, want uint32) (network.Lease, error) {
	pick := func(taken map[string]string) (string, error) {
		if want != 0 {
			return formatLease(kind, want), nil
		}
		for v := r.Min; v <= r.Max && v >= r.Min; v++ { // v >= r.Min stops a wrap at MaxUint32
			if _, ok := taken[formatLease(kind, v)]; !ok {
				return formatLease(kind, v), nil
			}
		}
		return "", fmt.Errorf("lease %s in [%d, %d]: %w", kind, r.Min, r.Max, network.ErrExhausted)
	}
	got, err := l.st.AcquireLeaseFunc(ctx, string(kind), vmID, pick)
	if errors.Is(err, store.ErrLeaseTaken) {
		return network.Lease{}, fmt.Errorf("%w: %w", network.ErrLeaseTaken, err)
	}
	if err != nil {
		return network.Lease{}, err
	}
	v, err := parseLease(kind, got)
	return network.Lease{VMID: vmID, Kind: kind, Value: v}, err
}

// Release implements network.Leases.
func (l storeLeases) Release(ctx context.Context, lease network.Lease) error {
	return l.st.ReleaseLease(ctx, string(lease.Kind), formatLease(lease.Kind, lease.Value), lease.VMID)
}

// List implements network.Leases. Rows of kinds the network package does
// not know (another feature's) are left out.
func (l storeLeases) List(ctx context.Context, vmID string) ([]network.Lease, error) {
	rows, err := l.st.Leases(ctx, vmID)
	if err != nil {
		return nil, err
	}
	var out []network.Lease
	for _, r := range rows {
		kind := network.Kind(r.Kind)
		if kind != network.KindIP && kind != network.KindPort {
			continue
		}
		v, err := parseLease(kind, r.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, network.Lease{VMID: r.VMID, Kind: kind, Value: v})
	}
	sortLeases(out)
	return out, nil
}

// sortLeases orders by kind then numeric value (the store orders text).
func sortLeases(ls []network.Lease) {
	slices.SortFunc(ls, func(a, b network.Lease) int {
		if c := strings.Compare(string(a.Kind), string(b.Kind)); c != 0 {
			return c
		}
		return cmp.Compare(a.Value, b.Value)
	})
}

func formatLease(kind network.Kind, v uint32) string {
	if kind == network.KindIP {
		return network.Lease{Value: v}.Addr().String()
	}
	return strconv.FormatUint(uint64(v), 10)
}

func parseLease(kind network.Kind, s string) (uint32, error) {
	if kind == network.KindIP {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return 0, fmt.Errorf("ip lease %q in the store is not an IPv4 address", s)
		}
		b := a.As4()
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), nil
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s lease %q in the store is not a number: %w", kind, s, err)
	}
	return uint32(v), nil
}
