package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "smolvm.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestVMLifecycle(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	vm := VM{ID: "a1", Status: StatusCreated, Dir: "/x/a1", Config: []byte(`{"cpus":1}`)}
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateVM(ctx, vm); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: got %v, want ErrExists", err)
	}
	got, err := s.UpdateVM(ctx, "a1", func(v *VM) error {
		v.Status = StatusRunning
		v.VMMPID = 42
		return nil
	})
	if err != nil || got.Status != StatusRunning {
		t.Fatalf("update: %v %+v", err, got)
	}
	back, err := s.GetVM(ctx, "a1")
	if err != nil || back.VMMPID != 42 || string(back.Config) != `{"cpus":1}` || back.Status != StatusRunning {
		t.Fatalf("get after update: %v %+v", err, back)
	}
	abort := errors.New("abort")
	if _, err := s.UpdateVM(ctx, "a1", func(v *VM) error { v.Status = StatusError; return abort }); !errors.Is(err, abort) {
		t.Fatalf("aborted update: %v", err)
	}
	if back, _ := s.GetVM(ctx, "a1"); back.Status != StatusRunning {
		t.Fatalf("aborted update was written: %s", back.Status)
	}
	if err := s.DeleteVM(ctx, "a1"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"get":    func() error { _, err := s.GetVM(ctx, "a1"); return err }(),
		"delete": s.DeleteVM(ctx, "a1"),
		"update": func() error { _, err := s.UpdateVM(ctx, "a1", func(*VM) error { return nil }); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s of deleted vm: got %v, want ErrNotFound", name, err)
		}
	}
}

// TestConcurrentWriters opens the file twice (as two CLI processes would)
// and has both transition many VMs at once; no update may be lost.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s1, path := openTest(t)
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s1.CreateVM(ctx, VM{ID: "c", Status: StatusCreated, Dir: "/c", Config: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	const n = 50
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := []*Store{s1, s2}[i%2]
			if _, err := s.UpdateVM(ctx, "c", func(v *VM) error { v.VMMPID++; return nil }); err != nil {
				t.Error(err)
			}
			if err := s.CreateVM(ctx, VM{ID: fmt.Sprintf("v%d", i), Status: StatusCreated, Dir: "/d", Config: []byte("{}")}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	v, _ := s2.GetVM(ctx, "c")
	if v.VMMPID != n {
		t.Fatalf("counter = %d after %d concurrent increments", v.VMMPID, n)
	}
	all, _ := s1.ListVMs(ctx)
	if len(all) != n+1 {
		t.Fatalf("listed %d vms, want %d", len(all), n+1)
	}
}

func TestLeases(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	for _, id := range []string{"a", "b"} {
		if err := s.CreateVM(ctx, VM{ID: id, Status: StatusCreated, Dir: "/" + id, Config: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	ports := []string{"2200", "2201"}
	tests := []struct {
		vm, want string
		err      error
	}{
		{"a", "2200", nil},
		{"b", "2201", nil},
		{"b", "", ErrExhausted},
	}
	for _, tt := range tests {
		got, err := s.AcquireLease(ctx, "ssh-port", tt.vm, ports)
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Fatalf("acquire for %s: got %q, %v; want %q, %v", tt.vm, got, err, tt.want, tt.err)
		}
	}
	if err := s.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.AcquireLease(ctx, "ssh-port", "b", ports); got != "2200" || err != nil {
		t.Fatalf("lease of deleted vm not freed: %q %v", got, err)
	}
	if err := s.ReleaseLeases(ctx, "b", ""); err != nil {
		t.Fatal(err)
	}
	if ls, _ := s.Leases(ctx, ""); len(ls) != 0 {
		t.Fatalf("leases left after release: %v", ls)
	}
}
