package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestTakeReadyConcurrently has many goroutines, each with its own
// connection to the database file (as separate processes would), take
// from one pool at once: every ready VM goes to exactly one taker.
func TestTakeReadyConcurrently(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	const ready, takers = 12, 20
	if err := s.CreatePool(ctx, Pool{Name: "p", Config: []byte("{}"), Size: ready}, nil); err != nil {
		t.Fatal(err)
	}
	for i := range ready {
		id := fmt.Sprintf("vm-%02d", i)
		if err := s.ReservePoolSlot(ctx, "p", id); err != nil {
			t.Fatal(err)
		}
		if err := s.MarkPoolReady(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	got := map[string]int{}
	empty := 0
	var wg sync.WaitGroup
	for range takers {
		wg.Go(func() {
			st, err := Open(ctx, path)
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			id, err := st.TakeReady(ctx, "p")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrPoolEmpty):
				empty++
			case err != nil:
				t.Error(err)
			default:
				got[id]++
			}
		})
	}
	wg.Wait()
	if len(got) != ready || empty != takers-ready {
		t.Fatalf("%d distinct vms taken, %d empty replies; want %d and %d", len(got), empty, ready, takers-ready)
	}
	for id, n := range got {
		if n != 1 {
			t.Errorf("%s handed out %d times", id, n)
		}
	}
}

func TestPoolSlotsAndBudget(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	errBudget := errors.New("over budget")
	budget := func(others []Pool) error {
		if len(others) >= 1 {
			return errBudget
		}
		return nil
	}
	if err := s.CreatePool(ctx, Pool{Name: "a", Config: []byte("{}"), Size: 2}, budget); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{"same name", func() error { return s.CreatePool(ctx, Pool{Name: "a", Config: []byte("{}"), Size: 1}, nil) }, ErrExists},
		{"budget refuses", func() error { return s.CreatePool(ctx, Pool{Name: "b", Config: []byte("{}"), Size: 1}, budget) }, errBudget},
		{"first slot", func() error { return s.ReservePoolSlot(ctx, "a", "x1") }, nil},
		{"second slot", func() error { return s.ReservePoolSlot(ctx, "a", "x2") }, nil},
		{"full", func() error { return s.ReservePoolSlot(ctx, "a", "x3") }, ErrPoolFull},
		{"nothing ready", func() error { _, err := s.TakeReady(ctx, "a"); return err }, ErrPoolEmpty},
		{"mark ready", func() error { return s.MarkPoolReady(ctx, "x2") }, nil},
		{"take it", func() error {
			id, err := s.TakeReady(ctx, "a")
			if err == nil && id != "x2" {
				return fmt.Errorf("took %s, want x2", id)
			}
			return err
		}, nil},
		{"room again", func() error { return s.ReservePoolSlot(ctx, "a", "x3") }, nil},
		{"unknown pool", func() error { return s.ReservePoolSlot(ctx, "zz", "y") }, ErrNotFound},
		{"delete pool", func() error { return s.DeletePool(ctx, "a") }, nil},
		{"members gone", func() error {
			if m, _ := s.PoolMembers(ctx, "a"); len(m) != 0 {
				return fmt.Errorf("%d members left", len(m))
			}
			return nil
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSnapshotRows(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	sn := Snapshot{Name: "s1", SourceVM: "vm1", Dir: "/d/s1", Manifest: []byte(`{"a":1}`), CreatedAt: time.Unix(5, 0)}
	if err := s.CreateSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSnapshot(ctx, sn); !errors.Is(err, ErrExists) {
		t.Fatalf("second create = %v, want ErrExists", err)
	}
	got, err := s.GetSnapshot(ctx, "s1")
	if err != nil || got.Dir != sn.Dir || string(got.Manifest) != `{"a":1}` || !got.CreatedAt.Equal(sn.CreatedAt) {
		t.Fatalf("get = %+v, %v", got, err)
	}
	if l, err := s.ListSnapshots(ctx); err != nil || len(l) != 1 {
		t.Fatalf("list = %v, %v", l, err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{s.DeleteSnapshot(ctx, "s1"), func() error { _, err := s.GetSnapshot(ctx, "s1"); return err }()} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("after delete: %v, want ErrNotFound", err)
		}
	}
}
