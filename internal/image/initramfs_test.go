package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// cpioTestEntry is one entry read back from a newc archive.
type cpioTestEntry struct {
	Name         string
	Mode         uint32
	RMaj, RMin   uint32
	Data         []byte
	Nlink, Inode uint32
}

// cpioTestRead parses a newc archive up to its trailer.
func cpioTestRead(t *testing.T, b []byte) []cpioTestEntry {
	t.Helper()
	var out []cpioTestEntry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) {
			t.Fatalf("archive truncated at %d", off)
		}
		h := string(b[off : off+110])
		if h[:6] != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(h[6+8*i:14+8*i], 16, 32)
			if err != nil {
				t.Fatalf("bad header field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		namesize, filesize := int(field(11)), int(field(6))
		name := string(b[off+110 : off+110+namesize-1])
		dataOff := align(off + 110 + namesize)
		e := cpioTestEntry{Name: name, Mode: field(1), Nlink: field(4), Inode: field(0), RMaj: field(9), RMin: field(10),
			Data: b[dataOff : dataOff+filesize]}
		off = align(dataOff + filesize)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.Dir("/etc", 0o755)
	c.File("etc/a", 0o644, []byte("x"))       // 1 byte: needs padding
	c.File("etc/four", 0o600, []byte("four")) // aligned
	c.File("etc/empty", 0o644, nil)           // no data
	c.CharDev("dev/console", 0o600, 5, 1)     // device node
	c.Symlink("bin/sh", "/init")              // symlink
	c.File("init", 0o755, bytes.Repeat([]byte{7}, 4097))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", buf.Len())
	}
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"etc", cpioModeDir | 0o755, ""},
		{"etc/a", cpioModeReg | 0o644, "x"},
		{"etc/four", cpioModeReg | 0o600, "four"},
		{"etc/empty", cpioModeReg | 0o644, ""},
		{"dev/console", cpioModeChr | 0o600, ""},
		{"bin/sh", cpioModeLink | 0o777, "/init"},
		{"init", cpioModeReg | 0o755, strings.Repeat("\x07", 4097)},
	}
	got := cpioTestRead(t, buf.Bytes())
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Name != w.name || g.Mode != w.mode || string(g.Data) != w.data {
			t.Errorf("entry %d = %q mode %o (%d bytes), want %q mode %o (%d bytes)", i, g.Name, g.Mode, len(g.Data), w.name, w.mode, len(w.data))
		}
	}
	if got[4].RMaj != 5 || got[4].RMin != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", got[4].RMaj, got[4].RMin)
	}

	// The system's cpio must agree with our reading of the archive.
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Logf("cpio tool not installed; skipping the cross-check: %v", err)
		return
	}
	cmd := exec.Command("cpio", "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	var names []string
	for _, w := range want {
		names = append(names, w.name)
	}
	if g, w := strings.TrimSpace(string(out)), strings.Join(names, "\n"); g != w {
		t.Errorf("cpio -t lists\n%s\nwant\n%s", g, w)
	}
}

func TestBuildInitramfsWithoutModules(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("#!agent binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	p, err := BuildInitramfs(ctx, cache, agent, Kernel{Path: "/vmlinuz"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]cpioTestEntry{}
	for _, e := range cpioTestRead(t, b) {
		files[e.Name] = e
	}
	if got := string(files["init"].Data); got != "#!agent binary" {
		t.Errorf("/init holds %q", got)
	}
	if files["init"].Mode != cpioModeReg|0o755 {
		t.Errorf("/init mode %o", files["init"].Mode)
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot"} {
		if files[d].Mode&cpioModeDir == 0 {
			t.Errorf("no directory %s in the archive", d)
		}
	}
	list := strings.TrimPrefix(agentproto.InitramfsModuleList, "/")
	if e, ok := files[list]; !ok || len(e.Data) != 0 {
		t.Errorf("module list %q = %q (present %v), want empty", list, e.Data, ok)
	}

	// Same inputs: same file, not rewritten. Changed agent: another file.
	again, err := BuildInitramfs(ctx, cache, agent, Kernel{})
	if err != nil || again != p {
		t.Errorf("second build = %q, %v; want cached %q", again, err, p)
	}
	if err := os.WriteFile(agent, []byte("#!agent binary v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	other, err := BuildInitramfs(ctx, cache, agent, Kernel{})
	if err != nil || other == p {
		t.Errorf("build after agent change = %q, %v; want a new file", other, err)
	}
	entries, _ := os.ReadDir(cache)
	var names []string
	for _, e := range entries {
		if e.Name() != "memo" { // the memo dir maps file identities to archives
			names = append(names, e.Name())
		}
	}
	if len(names) != 2 {
		t.Errorf("cache holds %v, want 2 archives (no temp files)", names)
	}
	// Once remembered, the archive is found by the binary's file identity
	// (size, mtime, inode) without reading it: same-size bytes written in
	// place with the old mtime put back still find the remembered archive.
	fi, err := os.Stat(agent)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agent, []byte("#!agent binary v3"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(agent, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if memo, err := BuildInitramfs(ctx, cache, agent, Kernel{}); err != nil || memo != other {
		t.Errorf("memoised build = %q, %v; want the remembered %q", memo, err, other)
	}
}

func TestBuildInitramfsBadInput(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("a"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		agent  string
		kernel Kernel
		errHas string
	}{
		{"missing agent", filepath.Join(dir, "nope"), Kernel{}, "reading agent binary"},
		{"missing modules dir", agent, Kernel{ModulesDir: filepath.Join(dir, "nomods")}, "choosing kernel modules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := filepath.Join(dir, "cache-"+strings.ReplaceAll(tt.name, " ", "-"))
			_, err := BuildInitramfs(context.Background(), cache, tt.agent, tt.kernel)
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.errHas)
			}
			if _, err := os.Stat(cache); !os.IsNotExist(err) {
				t.Errorf("cache dir %s was left behind (stat err %v)", cache, err)
			}
		})
	}
}

// hostModulesDir returns the Debian cloud kernel's module directory, or
// skips the test when it is missing (failing instead under SMOLVM_VM_TESTS=1).
func hostModulesDir(t *testing.T) string {
	t.Helper()
	dir := "/lib/modules/6.1.0-57-cloud-amd64"
	if _, err := os.Stat(filepath.Join(dir, "kernel")); err != nil {
		if os.Getenv("SMOLVM_VM_TESTS") == "1" {
			t.Fatalf("SMOLVM_VM_TESTS=1 but the guest kernel's modules are missing: %v", err)
		}
		t.Skipf("needs the modules of linux-image-6.1.0-57-cloud-amd64 (%v)", err)
	}
	return dir
}

func TestBuildInitramfsRealModules(t *testing.T) {
	mods := hostModulesDir(t)
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := BuildInitramfs(context.Background(), dir, agent, Kernel{ModulesDir: mods})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	files := map[string][]byte{}
	for _, e := range cpioTestRead(t, b) {
		files["/"+e.Name] = e.Data
	}
	var list []string
	deps := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(files[agentproto.InitramfsModuleList])), "\n") {
		p, d, _ := strings.Cut(line, " ")
		list = append(list, p)
		deps[strings.TrimSuffix(filepath.Base(p), ".ko")] = d
	}
	t.Logf("modules in load order: %v (archive %d bytes)", list, len(b))
	pos := map[string]int{}
	for i, p := range list {
		data, ok := files[p]
		if !ok {
			t.Errorf("listed module %s is not in the archive", p)
		}
		if !bytes.HasPrefix(data, []byte("\x7fELF")) {
			t.Errorf("module %s is not an ELF object", p)
		}
		pos[strings.TrimSuffix(filepath.Base(p), ".ko")] = i
	}
	before := [][2]string{
		{"virtio_ring", "virtio"}, {"virtio", "virtio_mmio"}, {"virtio", "virtio_blk"},
		{"virtio_ring", "virtio_blk"}, {"failover", "net_failover"}, {"net_failover", "virtio_net"},
		{"vsock", "vmw_vsock_virtio_transport_common"}, {"vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"},
		{"virtio", "virtio_rng"}, {"virtio", "virtio_console"},
	}
	for _, ab := range before {
		a, okA := pos[ab[0]]
		b, okB := pos[ab[1]]
		if !okA || !okB || a >= b {
			t.Errorf("%s (at %d, present %v) must load before %s (at %d, present %v)", ab[0], a, okA, ab[1], b, okB)
		}
	}
	// The guest learns dependencies from the list, not the module files.
	for mod, want := range map[string]string{"virtio_ring": "", "net_failover": "failover", "virtio_blk": "virtio,virtio_ring"} {
		if got := deps[mod]; !sameSet(got, want) {
			t.Errorf("listed dependencies of %s = %q, want %q", mod, got, want)
		}
	}
	if _, ok := pos["overlay"]; !ok {
		t.Error("overlay module missing")
	}
	if _, ok := pos["ext4"]; ok {
		t.Error("ext4 is built into this kernel and must be skipped")
	}
	if _, ok := pos["virtio_pci"]; ok {
		t.Error("virtio_pci is not needed on microvm")
	}
}

func ExampleBuildInitramfs() {
	exe, _ := os.Executable()
	p, err := BuildInitramfs(context.Background(), os.TempDir(), exe, Kernel{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.Remove(p)
	f, _ := os.Open(p)
	defer f.Close()
	magic := make([]byte, 6)
	io.ReadFull(f, magic)
	fmt.Println(string(magic))
	// Output: 070701
}

// sameSet compares two comma-separated lists ignoring order.
func sameSet(a, b string) bool {
	x, y := strings.Split(a, ","), strings.Split(b, ",")
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}
