package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRootfsHostMirror(t *testing.T) {
	tests := []struct {
		dir, suite, want string
	}{
		{"deb822", "bookworm", "http://mirror.example/debian"},
		{"deb822", "trixie", "http://mirror.example/debian"}, // no suite match: path fallback
		{"oneline", "bookworm", "http://archive.example/debian/"},
		{"disabled", "trixie", "http://on.example/debian/"},
		{"nodebian", "bookworm", ""},
		{"does-not-exist", "bookworm", ""},
	}
	for _, tt := range tests {
		t.Run(tt.dir+"/"+tt.suite, func(t *testing.T) {
			got, err := rootfsHostMirror(filepath.Join("testdata/apt", tt.dir), tt.suite)
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), "no Debian archive") {
					t.Fatalf("rootfsHostMirror = %q, %v; want a 'no Debian archive' error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("rootfsHostMirror = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestRootfsHostSuite(t *testing.T) {
	tests := map[string]string{
		"debian-bookworm": "bookworm",
		"debian-trixie":   "trixie",
		"ubuntu-noble":    rootfsDefaultSuite,
		"missing":         rootfsDefaultSuite,
	}
	for file, want := range tests {
		if got := rootfsHostSuite(filepath.Join("testdata/osrelease", file)); got != want {
			t.Errorf("rootfsHostSuite(%s) = %q, want %q", file, got, want)
		}
	}
}

func TestRootfsDigestFollowsInputs(t *testing.T) {
	base := rootfsInputs{Recipe: "base", Version: 1, Packages: []string{"bash"}, Suite: "bookworm", Mirror: "http://a.example/debian"}
	changes := map[string]func(in *rootfsInputs){
		"recipe":   func(in *rootfsInputs) { in.Recipe = "tiny" },
		"version":  func(in *rootfsInputs) { in.Version++ },
		"packages": func(in *rootfsInputs) { in.Packages = []string{"bash", "git"} },
		"suite":    func(in *rootfsInputs) { in.Suite = "trixie" },
		"mirror":   func(in *rootfsInputs) { in.Mirror = "http://b.example/debian" },
		"busybox":  func(in *rootfsInputs) { in.Busybox = "abc" },
	}
	first, again := base.digest(), base.digest()
	if !strings.HasPrefix(first, "sha256:") || first != again {
		t.Fatalf("digest %q is not a stable sha256", base.digest())
	}
	for what, change := range changes {
		in := base
		change(&in)
		if in.digest() == base.digest() {
			t.Errorf("changing the %s leaves the digest unchanged", what)
		}
	}
	withSource := base
	withSource.Source = "elsewhere"
	if withSource.digest() != base.digest() {
		t.Error("the Source label changes the digest; it is not an input")
	}
}

func TestRootfsImageSize(t *testing.T) {
	tests := []struct {
		name     string
		use      rootfsContentUsage
		extraMiB int
		min, max int64
	}{
		{"empty gets the minimum", rootfsContentUsage{}, 0, 64 * mib, 64 * mib},
		{"tiny busybox tree", rootfsContentUsage{Bytes: 3 * mib, Inodes: 300}, 0, 64 * mib, 64 * mib},
		{"base-like tree", rootfsContentUsage{Bytes: 400 * mib, Inodes: 13000}, 512, 928 * mib, 1100 * mib},
		{"headroom counts", rootfsContentUsage{Bytes: 100 * mib, Inodes: 10}, 1024, 1124 * mib, 1300 * mib},
	}
	for _, tt := range tests {
		got := rootfsImageSize(tt.use, tt.extraMiB)
		if got < tt.min || got > tt.max || got%mib != 0 {
			t.Errorf("%s: size %d MiB, want whole MiB in [%d, %d]", tt.name, got/mib, tt.min/mib, tt.max/mib)
		}
	}
	if n := rootfsInodeCount(rootfsContentUsage{Bytes: mib, Inodes: 100000}, 64*mib); n < 100000 {
		t.Errorf("a tree of 100000 small files asks for %d inodes", n)
	}
	if n := rootfsInodeCount(rootfsContentUsage{Bytes: 3 * mib, Inodes: 300}, 64*mib); n != 0 {
		t.Errorf("a small tree overrides mkfs's inode count with %d", n)
	}
}

func TestRootfsDebootstrapProgress(t *testing.T) {
	log, err := os.ReadFile("testdata/debootstrap.log")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	d := &rootfsDebootstrapProgress{p: newProgressReporter(&out)}
	sc := bufio.NewScanner(bytes.NewReader(log))
	for sc.Scan() {
		d.line(sc.Text())
	}
	d.p.Done()
	want := []string{
		"downloading packages",
		"downloading packages: done (4)",
		"extracting packages (4)",
		"extracting packages: done (2)",
		"unpacking packages (4)",
		"unpacking packages: done (2)",
		"configuring packages (4)",
		"configuring packages: done (2)",
		"unpacking packages (4)",
		"unpacking packages: done (4)",
		"configuring packages (4)",
		"configuring packages: done (5)",
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("progress lines:\n%s\nwant:\n%s", out.String(), strings.Join(want, "\n"))
	}
}

func TestRootfsTinyRejectsBadBusybox(t *testing.T) {
	tests := []struct {
		name, busybox, want string
	}{
		{"missing", "/nonexistent/busybox", "apt-get install busybox-static"},
		{"not elf", "testdata/debootstrap.log", "not an ELF binary"},
		{"dynamic", "/bin/ls", "dynamically linked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "dynamic" {
				storeTestNeed(t, tt.busybox)
			}
			dir := filepath.Join(t.TempDir(), "images")
			s := NewStore(dir, nil)
			s.recipes["tiny"] = rootfsTiny{busybox: tt.busybox}
			_, err := s.Ensure(context.Background(), "tiny", BuildOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Ensure(tiny) = %v, want an error containing %q", err, tt.want)
			}
			storeTestNoLeftovers(t, dir)
		})
	}
}

// rootfsTestTiny builds the tiny image into a fresh store.
func rootfsTestTiny(t *testing.T) (*Store, Image) {
	t.Helper()
	storeTestNeed(t, "/bin/busybox", "mkfs.ext4", "debugfs")
	s := NewStore(filepath.Join(t.TempDir(), "images"), nil)
	var progress bytes.Buffer
	start := time.Now()
	img, err := s.Ensure(context.Background(), "tiny", BuildOptions{Progress: &progress})
	if err != nil {
		t.Fatalf("Ensure(tiny): %v", err)
	}
	t.Logf("tiny built in %v: %d MiB file, %d KiB used", time.Since(start).Round(time.Millisecond), img.Size/mib, storeTestUsedKiB(t, img.Path))
	if !strings.Contains(progress.String(), "making ext4") {
		t.Errorf("no progress reported: %q", progress.String())
	}
	return s, img
}

// storeTestUsedKiB is the disk space a sparse file really takes.
func storeTestUsedKiB(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks / 2 // 512-byte blocks
}

func TestRootfsTinyBuild(t *testing.T) {
	s, img := rootfsTestTiny(t)
	if img.Source != "builtin:tiny" || !strings.HasPrefix(img.Digest, "sha256:") || img.Size < rootfsMinSize {
		t.Errorf("image = %+v", img)
	}
	bin := storeTestDebugfs(t, img.Path, "ls -l /bin")
	for _, want := range []string{"100755 (1)      0      0", " busybox", " sh"} {
		if !strings.Contains(bin, want) {
			t.Errorf("/bin in the image lacks %q:\n%s", want, bin)
		}
	}
	sh := storeTestDebugfs(t, img.Path, "stat /bin/sh")
	if !strings.Contains(sh, "Type: symlink") || !strings.Contains(sh, `Fast link dest: "/bin/busybox"`) {
		t.Errorf("/bin/sh is not a link to /bin/busybox:\n%s", sh)
	}
	root := storeTestDebugfs(t, img.Path, "ls -l /")
	for _, dir := range []string{"proc", "sys", "dev", "run", "tmp", "root", "etc", "usr", "sbin"} {
		if !strings.Contains(root, " "+dir+"\n") {
			t.Errorf("image root lacks /%s:\n%s", dir, root)
		}
	}
	if passwd := storeTestDebugfs(t, img.Path, "cat /etc/passwd"); !strings.Contains(passwd, "root:x:0:0:root:/root:/bin/sh") {
		t.Errorf("/etc/passwd = %q", passwd)
	}
	if label := storeTestDebugfs(t, img.Path, "stats"); !strings.Contains(label, "Filesystem volume name:   smolvm-root") {
		t.Errorf("volume label missing:\n%.400s", label)
	}
	storeTestNoLeftovers(t, s.Dir(), "tiny")
}

func TestRootfsEnsureRebuildsOnlyWhenNeeded(t *testing.T) {
	s, first := rootfsTestTiny(t)
	ctx := context.Background()
	st1, err := os.Stat(first.Path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Ensure(ctx, "tiny", BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(again.Path)
	if !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) || !again.Created.Equal(first.Created) {
		t.Fatalf("second Ensure rebuilt the image: %+v then %+v", first, again)
	}

	forced, err := s.Build(ctx, "tiny", BuildOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	st3, _ := os.Stat(forced.Path)
	if os.SameFile(st2, st3) || forced.Digest != first.Digest {
		t.Fatalf("Force did not rebuild (same file %v) or changed the digest (%s, %s)", os.SameFile(st2, st3), first.Digest, forced.Digest)
	}

	// Inputs changed (as if busybox had been upgraded): Ensure rebuilds.
	meta := filepath.Join(s.Dir(), "tiny.json")
	data, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	stale := strings.Replace(string(data), forced.Digest, "sha256:0000", 1)
	if err := os.WriteFile(meta, []byte(stale), 0o644); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := s.Ensure(ctx, "tiny", BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st4, _ := os.Stat(rebuilt.Path)
	if os.SameFile(st3, st4) || rebuilt.Digest != first.Digest {
		t.Fatalf("Ensure after an input change did not rebuild: %+v", rebuilt)
	}

	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Digest != first.Digest {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if err := s.Remove("tiny"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("tiny"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Remove = %v, want ErrNotFound", err)
	}
	storeTestNoLeftovers(t, s.Dir())
}

func TestRootfsBaseBuild(t *testing.T) {
	if !storeTestGated() {
		t.Skip("building the base image runs debootstrap against the host's Debian mirror for a minute or more; set SMOLVM_VM_TESTS=1")
	}
	storeTestNeed(t, "debootstrap", "mkfs.ext4", "debugfs")
	s := NewStore(filepath.Join(t.TempDir(), "images"), nil)
	var progress bytes.Buffer
	start := time.Now()
	img, err := s.Ensure(context.Background(), "base", BuildOptions{Progress: &progress})
	if err != nil {
		t.Fatalf("Ensure(base): %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("base built in %v: %d MiB file, %d MiB used; progress:\n%s", time.Since(start).Round(time.Second), img.Size/mib, storeTestUsedKiB(t, img.Path)/1024, progress.String())
	if !strings.HasPrefix(img.Source, "debootstrap:") {
		t.Errorf("source = %q", img.Source)
	}
	bin := storeTestDebugfs(t, img.Path, "ls -l /usr/bin")
	for _, want := range []string{" python3\n", " bash\n", " git\n", " curl\n"} {
		if !strings.Contains(bin, want) {
			t.Errorf("/usr/bin in the base image lacks %q", strings.TrimSpace(want))
		}
	}
	for _, f := range []string{"/etc/machine-id", "/etc/resolv.conf"} {
		if st := storeTestDebugfs(t, img.Path, "stat "+f); !strings.Contains(st, "Type: regular") || !strings.Contains(st, "Size: 0") {
			t.Errorf("%s is not an empty file:\n%s", f, st)
		}
	}
	if host := storeTestDebugfs(t, img.Path, "cat /etc/hostname"); !strings.Contains(host, "smolvm") {
		t.Errorf("/etc/hostname = %q, want smolvm", host)
	}
	if debs := storeTestDebugfs(t, img.Path, "ls /var/cache/apt/archives"); strings.Contains(debs, ".deb") {
		t.Errorf("apt cache not cleaned:\n%s", debs)
	}
	for _, phase := range []string{"downloading packages", "configuring packages", "making ext4"} {
		if !strings.Contains(progress.String(), phase) {
			t.Errorf("progress lacks phase %q", phase)
		}
	}
	storeTestNoLeftovers(t, s.Dir(), "base")
}

// rootfsCancelWriter cancels a build once its progress shows a phase.
type rootfsCancelWriter struct {
	phase  string
	cancel context.CancelFunc
	buf    bytes.Buffer
}

func (w *rootfsCancelWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	if strings.Contains(w.buf.String(), w.phase) {
		w.cancel()
	}
	return len(b), nil
}

// TestRootfsBaseCancelled interrupts debootstrap while it configures
// packages in its chroot (with /proc mounted there) and checks that no
// mount, process or file of the build survives.
func TestRootfsBaseCancelled(t *testing.T) {
	if !storeTestGated() {
		t.Skip("runs debootstrap against the host's Debian mirror; set SMOLVM_VM_TESTS=1")
	}
	storeTestNeed(t, "debootstrap", "mkfs.ext4")
	dir := filepath.Join(t.TempDir(), "images")
	s := NewStore(dir, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &rootfsCancelWriter{phase: "configuring packages", cancel: cancel}
	_, err := s.Ensure(ctx, "base", BuildOptions{Progress: w})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Ensure(base) = %v, want context.Canceled; progress:\n%s", err, w.buf.String())
	}
	if mounts, err := storeMountsUnder(dir); err != nil || len(mounts) > 0 {
		t.Errorf("mounts left under the store: %v (%v)", mounts, err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/root")
	for _, link := range procs {
		if root, err := os.Readlink(link); err == nil && strings.HasPrefix(root, dir) {
			t.Errorf("process %s still runs chrooted in the build dir", link)
		}
	}
	storeTestNoLeftovers(t, dir)
}

func TestRootfsBaseTidyDoesNotFollowLinks(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "host-resolv.conf")
	kernelTestWrite(t, outside, []byte("nameserver 10.0.0.1\n"))
	kernelTestWrite(t, filepath.Join(root, "var/cache/apt/archives/bash_5.2_amd64.deb"), []byte("deb"))
	kernelTestWrite(t, filepath.Join(root, "var/lib/apt/lists/mirror_dists_bookworm_InRelease"), []byte("x"))
	kernelTestWrite(t, filepath.Join(root, "etc/hostname"), []byte("buildhost\n"))
	if err := os.Symlink(outside, filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	if err := rootfsBaseTidy(root); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(outside); string(data) != "nameserver 10.0.0.1\n" {
		t.Errorf("tidying wrote through a symlink to %s: %q", outside, data)
	}
	for name, want := range map[string]string{"etc/resolv.conf": "", "etc/hostname": "smolvm\n", "etc/machine-id": ""} {
		st, err := os.Lstat(filepath.Join(root, name))
		data, _ := os.ReadFile(filepath.Join(root, name))
		if err != nil || !st.Mode().IsRegular() || string(data) != want {
			t.Errorf("%s = %q (%v), want regular file %q", name, data, err, want)
		}
	}
	for _, gone := range []string{"var/cache/apt/archives/bash_5.2_amd64.deb", "var/lib/apt/lists/mirror_dists_bookworm_InRelease"} {
		if _, err := os.Stat(filepath.Join(root, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not cleaned", gone)
		}
	}
}

func TestRootfsEnsureKeepsImageWhenRecipeBreaks(t *testing.T) {
	s, built := rootfsTestTiny(t)
	s.recipes["tiny"] = rootfsTiny{busybox: "/nonexistent/busybox"}
	got, err := s.Ensure(context.Background(), "tiny", BuildOptions{})
	if err != nil || got.Digest != built.Digest {
		t.Fatalf("Ensure with busybox gone = %+v, %v; want the existing image", got, err)
	}
	if _, err := s.Build(context.Background(), "tiny", BuildOptions{Force: true}); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Fatalf("forced Build with busybox gone = %v, want the apt-get hint", err)
	}
	if got, err := s.Get("tiny"); err != nil || got.Digest != built.Digest {
		t.Fatalf("failed rebuild lost the image: %+v, %v", got, err)
	}
}
