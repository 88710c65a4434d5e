package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// openLeaseStores opens the same database twice (as two supervisors would)
// with VM rows a, b and c.
func openLeaseStores(t *testing.T) (*store.Store, *store.Store) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "smolvm.db")
	var sts [2]*store.Store
	for i := range sts {
		st, err := store.Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		sts[i] = st
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := sts[0].CreateVM(ctx, store.VM{ID: id, Status: store.StatusCreated, Dir: "/x/" + id, Config: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	return sts[0], sts[1]
}

func TestNetLeases(t *testing.T) {
	ctx := context.Background()
	st1, st2 := openLeaseStores(t)
	l1, l2 := NetLeases(st1), NetLeases(st2)
	pool, err := network.NewPool(netip.MustParsePrefix("10.5.0.0/29")) // guests .2-.6
	if err != nil {
		t.Fatal(err)
	}
	ports := network.Range{Min: 20000, Max: 20001}
	steps := []struct {
		name    string
		leases  network.Leases
		vm      string
		kind    network.Kind
		r       network.Range
		want    uint32
		got     string // the value as text (address or number)
		wantErr error
	}{
		{"first address", l1, "a", network.KindIP, pool.GuestRange(), 0, "10.5.0.2", nil},
		{"next address from the other handle", l2, "b", network.KindIP, pool.GuestRange(), 0, "10.5.0.3", nil},
		{"exact address held by another vm", l1, "c", network.KindIP, pool.GuestRange(), 0x0a050003, "", network.ErrLeaseTaken},
		{"exact address held by the same vm", l2, "b", network.KindIP, pool.GuestRange(), 0x0a050003, "10.5.0.3", nil},
		{"first port", l2, "a", network.KindPort, ports, 0, "20000", nil},
		{"second port", l1, "c", network.KindPort, ports, 0, "20001", nil},
		{"ports exhausted", l1, "b", network.KindPort, ports, 0, "", network.ErrExhausted},
		{"exact port outside the range", l1, "b", network.KindPort, ports, 8080, "8080", nil},
		{"unknown vm is refused by the foreign key", l1, "nope", network.KindPort, ports, 9000, "", errAny},
	}
	for _, s := range steps {
		got, err := s.leases.Acquire(ctx, s.vm, s.kind, s.r, s.want)
		switch {
		case s.wantErr == errAny && err == nil:
			t.Fatalf("%s: got %+v, want an error", s.name, got)
		case s.wantErr != nil && s.wantErr != errAny && !errors.Is(err, s.wantErr):
			t.Fatalf("%s: got %+v, %v; want %v", s.name, got, err, s.wantErr)
		case s.wantErr == nil && err != nil:
			t.Fatalf("%s: %v", s.name, err)
		case s.wantErr == nil && formatLease(s.kind, got.Value) != s.got:
			t.Fatalf("%s: got %s, want %s", s.name, formatLease(s.kind, got.Value), s.got)
		}
	}
	all, err := l2.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want := "[{a ip 10.5.0.2} {b ip 10.5.0.3} {b port 8080} {a port 20000} {c port 20001}]"
	if got := leaseString(all); got != want {
		t.Fatalf("List = %s\nwant   %s", got, want)
	}
	// Release by the wrong VM does nothing; by the holder frees the value.
	if err := l1.Release(ctx, network.Lease{VMID: "b", Kind: network.KindIP, Value: 0x0a050002}); err != nil {
		t.Fatal(err)
	}
	if err := l1.Release(ctx, network.Lease{VMID: "a", Kind: network.KindIP, Value: 0x0a050002}); err != nil {
		t.Fatal(err)
	}
	got, err := l2.Acquire(ctx, "c", network.KindIP, pool.GuestRange(), 0)
	if err != nil || got.Addr().String() != "10.5.0.2" {
		t.Fatalf("after release: got %v, %v; want 10.5.0.2", got.Addr(), err)
	}
	// Deleting a VM's row releases its leases.
	if err := st1.DeleteVM(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if left, _ := l1.List(ctx, "b"); len(left) != 0 {
		t.Fatalf("leases of deleted vm b: %s", leaseString(left))
	}
}

var errAny = errors.New("any error")

func leaseString(ls []network.Lease) string {
	s := "["
	for i, l := range ls {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("{%s %s %s}", l.VMID, l.Kind, formatLease(l.Kind, l.Value))
	}
	return s + "]"
}

// Two handles acquiring at once never get the same value.
func TestNetLeasesConcurrent(t *testing.T) {
	ctx := context.Background()
	st1, st2 := openLeaseStores(t)
	r := network.Range{Min: 30000, Max: 30999}
	var mu sync.Mutex
	seen := map[uint32]bool{}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := NetLeases([]*store.Store{st1, st2}[i%2])
			got, err := l.Acquire(ctx, []string{"a", "b", "c"}[i%3], network.KindPort, r, 0)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[got.Value] {
				t.Errorf("port %d handed out twice", got.Value)
			}
			seen[got.Value] = true
		}()
	}
	wg.Wait()
	if len(seen) != 20 {
		t.Fatalf("got %d distinct ports, want 20", len(seen))
	}
}
