package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// storeTestGated reports whether the heavy test tier is on.
func storeTestGated() bool { return os.Getenv("SMOLVM_VM_TESTS") == "1" }

// storeTestNeed skips the test when a tool is missing, or fails it when the
// heavy tier is on (CI installs them all).
func storeTestNeed(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		_, err := os.Stat(p)
		if strings.Contains(p, "/") && err == nil {
			continue
		}
		if _, lerr := exec.LookPath(p); !strings.Contains(p, "/") && lerr == nil {
			continue
		}
		if storeTestGated() {
			t.Fatalf("%s is missing but SMOLVM_VM_TESTS=1: install busybox-static and e2fsprogs", p)
		}
		t.Skipf("%s is missing (install busybox-static and e2fsprogs); skipping real image build", p)
	}
}

// storeTestDebugfs runs a debugfs request against an ext4 file.
func storeTestDebugfs(t *testing.T, image, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, image).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v\n%s", request, image, err, out)
	}
	return string(out)
}

// storeTestEntries lists dir, hidden entries included.
func storeTestEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// storeTestNoLeftovers fails if dir holds anything but lock files and the
// images named in keep.
func storeTestNoLeftovers(t *testing.T, dir string, keep ...string) {
	t.Helper()
	for _, name := range storeTestEntries(t, dir) {
		if strings.HasSuffix(name, ".lock") && strings.HasPrefix(name, ".") {
			continue
		}
		base := strings.TrimSuffix(strings.TrimSuffix(name, ".ext4"), ".json")
		kept := false
		for _, k := range keep {
			kept = kept || base == k
		}
		if !kept {
			t.Errorf("left behind in %s: %s", dir, name)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"tiny", true},
		{"base", true},
		{"a", true},
		{"0day", true},
		{"my_img.v2-x", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"Tiny", false},
		{"-x", false},
		{".hidden", false},
		{"_x", false},
		{"a/b", false},
		{"../etc", false},
		{"a b", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error %v does not wrap ErrInvalidName", tt.name, err)
		}
	}
}

func TestStoreRejectsInvalidNames(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "images")
	s := NewStore(dir, nil)
	ctx := context.Background()
	never := func(context.Context, string) (Image, error) {
		t.Error("build ran for an invalid name")
		return Image{}, nil
	}
	calls := map[string]func(string) error{
		"Get":    func(n string) error { _, err := s.Get(n); return err },
		"Remove": func(n string) error { return s.Remove(n) },
		"Build":  func(n string) error { _, err := s.Build(ctx, n, BuildOptions{}); return err },
		"Ensure": func(n string) error { _, err := s.Ensure(ctx, n, BuildOptions{}); return err },
		"Add":    func(n string) error { _, err := s.Add(ctx, n, never); return err },
	}
	for call, fn := range calls {
		for _, name := range []string{"", "../x", "UPPER", "a/b"} {
			if err := fn(name); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%s(%q) = %v, want ErrInvalidName", call, name, err)
			}
		}
	}
	if entries := storeTestEntries(t, dir); len(entries) > 0 {
		t.Errorf("invalid names left files: %v", entries)
	}
}

func TestStoreGetMissing(t *testing.T) {
	s := NewStore(t.TempDir(), nil)
	_, err := s.Get("nope")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("Get(nope) = %v, want ErrNotFound naming the image", err)
	}
	if err := s.Remove("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove(nope) = %v, want ErrNotFound", err)
	}
	if _, err := s.Ensure(context.Background(), "custom", BuildOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Ensure of a non-builtin missing image = %v, want ErrNotFound", err)
	}
	if _, err := s.Build(context.Background(), "custom", BuildOptions{}); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "tiny") {
		t.Fatalf("Build of an unknown recipe = %v, want ErrNotFound listing the recipes", err)
	}
}

// storeTestStaging makes a small staging tree for Add tests.
func storeTestStaging(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "staging")
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/os-release"), []byte("ID=test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestStoreAddListRemove(t *testing.T) {
	storeTestNeed(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	s := NewStore(dir, nil)
	ctx := context.Background()
	staging := storeTestStaging(t)
	for _, name := range []string{"zeta", "alpha"} {
		img, err := s.Add(ctx, name, func(ctx context.Context, dst string) (Image, error) {
			if err := MakeExt4(ctx, staging, dst, 0); err != nil {
				return Image{}, err
			}
			return Image{Digest: "sha256:test", Source: "dir:" + staging, Config: &Config{Cmd: []string{"sh"}}}, nil
		})
		if err != nil {
			t.Fatalf("Add(%s): %v", name, err)
		}
		if img.Path != filepath.Join(dir, name+".ext4") || img.Size < rootfsMinSize || img.Created.IsZero() {
			t.Errorf("Add(%s) = %+v: want path in store, size >= 64 MiB, creation time", name, img)
		}
	}
	if out := storeTestDebugfs(t, filepath.Join(dir, "alpha.ext4"), "cat /etc/os-release"); !strings.Contains(out, "ID=test") {
		t.Errorf("alpha.ext4 lacks the staged file: %s", out)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "alpha" || list[1].Name != "zeta" {
		t.Fatalf("List = %+v, want alpha, zeta", list)
	}
	if list[0].Config == nil || list[0].Config.Cmd[0] != "sh" || list[0].Source != "dir:"+staging {
		t.Errorf("metadata not kept: %+v", list[0])
	}
	if err := s.Remove("zeta"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("zeta"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	list, err = s.List()
	if err != nil || len(list) != 1 || list[0].Name != "alpha" {
		t.Fatalf("List after Remove = %+v, %v; want alpha only", list, err)
	}
	storeTestNoLeftovers(t, dir, "alpha")
}

func TestStoreListSkipsRecordWithoutFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ghost.json"), []byte(`{"name":"ghost"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewStore(dir, nil)
	list, err := s.List()
	if err != nil || len(list) != 0 {
		t.Fatalf("List = %+v, %v; want nothing", list, err)
	}
	if _, err := s.Get("ghost"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(ghost) = %v, want ErrNotFound", err)
	}
}

func TestStoreFailedAddLeavesNothing(t *testing.T) {
	storeTestNeed(t, "mkfs.ext4")
	ctx := context.Background()
	staging := storeTestStaging(t)
	boom := errors.New("boom")
	tests := []struct {
		name  string
		build BuildFunc
		want  error
	}{
		{"build error after writing", func(ctx context.Context, dst string) (Image, error) {
			if err := os.WriteFile(dst, []byte("partial"), 0o644); err != nil {
				return Image{}, err
			}
			return Image{}, boom
		}, boom},
		{"no image written", func(context.Context, string) (Image, error) {
			return Image{Digest: "x"}, nil
		}, os.ErrNotExist},
		{"mkfs on a missing staging dir", func(ctx context.Context, dst string) (Image, error) {
			return Image{}, MakeExt4(ctx, filepath.Join(staging, "missing"), dst, 0)
		}, os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := NewStore(dir, nil)
			if _, err := s.Add(ctx, "img", tt.build); !errors.Is(err, tt.want) {
				t.Fatalf("Add = %v, want %v", err, tt.want)
			}
			storeTestNoLeftovers(t, dir)
		})
	}
}

func TestStoreFailedAddKeepsOldImage(t *testing.T) {
	storeTestNeed(t, "mkfs.ext4")
	ctx := context.Background()
	dir := t.TempDir()
	s := NewStore(dir, nil)
	staging := storeTestStaging(t)
	old, err := s.Add(ctx, "img", func(ctx context.Context, dst string) (Image, error) {
		return Image{Digest: "sha256:old"}, MakeExt4(ctx, staging, dst, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Add(ctx, "img", func(ctx context.Context, dst string) (Image, error) {
		return Image{}, errors.New("broken recipe")
	})
	if err == nil {
		t.Fatal("Add of a failing build succeeded")
	}
	got, err := s.Get("img")
	if err != nil || got.Digest != old.Digest {
		t.Fatalf("Get after failed rebuild = %+v, %v; want the old image", got, err)
	}
	storeTestNoLeftovers(t, dir, "img")
}

func TestStoreCancelledAddKillsToolAndLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pid string
	_, err := s.Add(ctx, "img", func(ctx context.Context, dst string) (Image, error) {
		if err := os.WriteFile(dst, []byte("partial"), 0o644); err != nil {
			return Image{}, err
		}
		// A child that ignores SIGTERM stands in for a stubborn tool; the
		// group sweep must still kill it.
		err := storeRunTool(ctx, storeTool{
			Name: "sh",
			Args: []string{"-c", `sh -c 'trap "" TERM; echo $$; exec sleep 300' & wait`},
			OnLine: func(line string) {
				pid = line
				cancel()
			},
		})
		return Image{}, err
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Add = %v, want context.Canceled", err)
	}
	storeTestNoLeftovers(t, dir)
	var n int
	for _, c := range pid {
		n = n*10 + int(c-'0')
	}
	if n <= 1 {
		t.Fatalf("child pid %q not reported", pid)
	}
	// SIGKILL is delivered asynchronously: give the child a while to be
	// gone, or a zombie its new parent has yet to reap.
	var stat []byte
	for range 100 {
		stat, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if _, after, _ := strings.Cut(string(stat), ") "); err != nil || strings.HasPrefix(after, "Z") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("tool child %d still alive 5 s after cancel: %s", n, stat)
}

func TestStoreBusyRemove(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, nil)
	unlock, err := s.tryLock("img")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("img"); !errors.Is(err, ErrBusy) {
		t.Errorf("Remove during a build = %v, want ErrBusy", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	never := func(context.Context, string) (Image, error) { return Image{}, errors.New("ran") }
	if _, err := s.Add(ctx, "img", never); !errors.Is(err, context.Canceled) {
		t.Errorf("Add waiting on a held lock with a cancelled ctx = %v, want context.Canceled", err)
	}
	unlock()
	if err := s.Remove("img"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove after unlock = %v, want ErrNotFound", err)
	}
}

func TestStoreConcurrentAddBuildsInTurn(t *testing.T) {
	storeTestNeed(t, "mkfs.ext4")
	dir := t.TempDir()
	s := NewStore(dir, nil)
	staging := storeTestStaging(t)
	var mu sync.Mutex
	running, overlap := 0, false
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			_, err := s.Add(context.Background(), "img", func(ctx context.Context, dst string) (Image, error) {
				mu.Lock()
				running++
				overlap = overlap || running > 1
				mu.Unlock()
				defer func() { mu.Lock(); running--; mu.Unlock() }()
				return Image{}, MakeExt4(ctx, staging, dst, 0)
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if overlap {
		t.Error("two builds of one name ran at once")
	}
	storeTestNoLeftovers(t, dir, "img")
}

func TestStoreCleansOnlyItsOwnStaleBuilds(t *testing.T) {
	storeTestNeed(t, "mkfs.ext4")
	dir := t.TempDir()
	s := NewStore(dir, nil)
	staleA := filepath.Join(dir, storeScratchPrefix("a")+"123")
	otherAB := filepath.Join(dir, storeScratchPrefix("a-b")+"456")
	for _, d := range []string{staleA, otherAB} {
		kernelTestWrite(t, filepath.Join(d, "staging/file"), []byte("x"))
	}
	staging := storeTestStaging(t)
	if _, err := s.Add(context.Background(), "a", func(ctx context.Context, dst string) (Image, error) {
		return Image{}, MakeExt4(ctx, staging, dst, 0)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(staleA); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale scratch dir of a killed build of a survived: %v", err)
	}
	if _, err := os.Stat(otherAB); err != nil {
		t.Errorf("building a removed image a-b's scratch dir: %v", err)
	}
}

func TestStoreCleanStale(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, nil)
	dead := filepath.Join(dir, storeScratchPrefix("dead")+"1")
	live := filepath.Join(dir, storeScratchPrefix("live")+"2")
	for _, d := range []string{dead, live} {
		kernelTestWrite(t, filepath.Join(d, "root/etc/passwd"), []byte("root"))
	}
	unlock, err := s.tryLock("live") // a build in progress
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := s.CleanStale(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale build dir survived: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a running build's dir was removed: %v", err)
	}
}

// BenchmarkBuildTiny measures a full (forced) build of the tiny image.
func BenchmarkBuildTiny(b *testing.B) {
	for _, p := range []string{"/bin/busybox", "/usr/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err != nil {
			b.Skipf("%s missing", p)
		}
	}
	s := NewStore(b.TempDir(), nil)
	for b.Loop() {
		if _, err := s.Build(context.Background(), "tiny", BuildOptions{Force: true}); err != nil {
			b.Fatal(err)
		}
	}
}
