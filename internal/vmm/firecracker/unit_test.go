package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/vmm"
)

func TestCmdline(t *testing.T) {
	cases := []struct{ base, want string }{
		{"", "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"},
		{"smolvm.root=/dev/vda console=hvc0 panic=5", "smolvm.root=/dev/vda console=hvc0 panic=5 reboot=k pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"},
	}
	for _, c := range cases {
		if got := cmdline(c.base); got != c.want {
			t.Errorf("cmdline(%q) =\n %q\nwant %q", c.base, got, c.want)
		}
	}
}

func TestJailerArgs(t *testing.T) {
	b := New(Options{UseJailer: true, UID: 123, GID: 456, ChrootBase: "/srv/j", NetNS: "smol1",
		CgroupVersion: 2, Cgroups: []string{"cpu.max=50000 100000"}})
	got := b.jailerArgs("vm-1", "/usr/bin/firecracker")
	want := []string{"--id", "vm-1", "--exec-file", "/usr/bin/firecracker", "--uid", "123", "--gid", "456",
		"--chroot-base-dir", "/srv/j", "--netns", "/var/run/netns/smol1", "--cgroup-version", "2",
		"--cgroup", "cpu.max=50000 100000", "--", "--api-sock", "/fc.sock"}
	if !slices.Equal(got, want) {
		t.Errorf("jailer args\n got %q\nwant %q", got, want)
	}
}

// TestJailer runs the launch path through the jailer (the fake plays it):
// files are hard links in the jail, every path firecracker sees is inside
// it, a snapshot comes out of it, and the jail goes with the process.
func TestJailer(t *testing.T) {
	base := shortDir(t)
	b, record := fakeBackend(t, fakeConfig{})
	exe := b.opts.Binary
	b.opts.UseJailer, b.opts.JailerBinary, b.opts.ChrootBase = true, exe, base
	b.opts.UID, b.opts.GID = os.Getuid(), os.Getgid()
	dir := shortDir(t)
	spec := fullSpec(t, dir)
	inst := launch(t, b, spec)
	jail := filepath.Join(base, filepath.Base(exe), spec.ID)
	root := filepath.Join(jail, "root")

	first, reqs := readRecord(t, record)
	requireNoViolations(t, reqs)
	if !slices.Equal(first.Args, b.jailerArgs(spec.ID, exe)) {
		t.Errorf("jailer ran with %q", first.Args)
	}
	var boot bootSource
	bodyOf(t, reqs, "PUT /boot-source", &boot)
	var d drive
	bodyOf(t, reqs, "PUT /drives/disk0", &d)
	var vs vsock
	bodyOf(t, reqs, "PUT /vsock", &vs)
	if boot.KernelImagePath != "/vmlinux" || boot.InitrdPath != "/initrd" || d.PathOnHost != "/disk0" || vs.UDSPath != "/v.sock" {
		t.Errorf("paths in the jail: kernel %q initrd %q disk %q vsock %q", boot.KernelImagePath, boot.InitrdPath, d.PathOnHost, vs.UDSPath)
	}
	for name, src := range map[string]string{"vmlinux": spec.Kernel, "disk0": spec.Disks[0].Path, "disk1": spec.Disks[1].Path} {
		a, err1 := os.Stat(filepath.Join(root, name))
		b, err2 := os.Stat(src)
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("%s in the jail is not a hard link of %s: %v %v", name, src, err1, err2)
		}
	}
	echoAgent(t, inst)

	ctx := testCtx(t)
	if err := inst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(t.TempDir(), "snap")
	if err := inst.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, snap); !slices.Equal(got, []string{SnapshotMemFile, SnapshotStateFile}) {
		t.Errorf("snapshot dir holds %v", got)
	}
	if _, err := os.Stat(filepath.Join(root, SnapshotMemFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot left in the jail: %v", err)
	}
	if err := inst.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(jail); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail %s left behind: %v", jail, err)
	}
	for _, src := range []string{spec.Kernel, spec.Disks[0].Path} {
		if _, err := os.Stat(src); err != nil {
			t.Errorf("removing the jail took %s with it: %v", src, err)
		}
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{apiLog, vmmLog}) {
		t.Errorf("run directory holds %v, want the two logs", got)
	}

	// A second launch with the same id while a jail exists is refused,
	// and the existing jail is not touched.
	if err := os.MkdirAll(jail, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Launch(ctx, spec); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("launch into an existing jail: %v", err)
	}
	if _, err := os.Stat(jail); err != nil {
		t.Errorf("existing jail removed: %v", err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	notKVM := filepath.Join(dir, "kvm")
	os.WriteFile(notKVM, nil, 0o644)
	cases := []struct {
		name string
		opts Options
		want []string
	}{
		{"no device, no binary", Options{KVMDevice: filepath.Join(dir, "none"), Binary: "/nonexistent/firecracker"},
			[]string{"no " + filepath.Join(dir, "none"), "firecracker binary not found"}},
		{"not a kvm device", Options{KVMDevice: notKVM, Binary: "/nonexistent/firecracker"},
			[]string{"does not answer KVM_GET_API_VERSION"}},
		{"jailer missing", Options{KVMDevice: notKVM, UseJailer: true, JailerBinary: "/nonexistent/jailer"},
			[]string{"jailer binary not found"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := New(c.opts).Check(context.Background())
			if !errors.Is(err, vmm.ErrUnavailable) {
				t.Fatalf("Check = %v, want ErrUnavailable", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCPUHasVirt(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		cpuinfo string
		want    bool
	}{
		{"processor\t: 0\nflags\t\t: fpu vme de pse vmx sse\n", true},
		{"flags\t\t: fpu svm\n", true},
		{"flags\t\t: fpu vme hypervisor\n", false},
		{"flags\t\t: fpu\nflags\t\t: vmx\n", false}, // only the first cpu counts
		{"", false},
	}
	for i, c := range cases {
		p := filepath.Join(dir, "cpuinfo")
		os.WriteFile(p, []byte(c.cpuinfo), 0o644)
		if got := vmm.CPUHasVirt(p); got != c.want {
			t.Errorf("case %d: CPUHasVirt = %v, want %v", i, got, c.want)
		}
	}
}

// TestDialVsockErrors covers each way the hybrid vsock handshake fails,
// against a unix socket server standing in for firecracker.
func TestDialVsockErrors(t *testing.T) {
	cases := []struct {
		name  string
		serve func(c net.Conn) // nil: nothing listens
		want  string
	}{
		{"no socket", nil, "has the vm started?"},
		{"nothing listens on the port", func(c net.Conn) { readN(c, 13) }, "is the agent running in the guest"},
		{"garbage reply", func(c net.Conn) { readN(c, 13); io.WriteString(c, "NOPE\n") }, `unexpected reply "NOPE"`},
		{"bad port in reply", func(c net.Conn) { readN(c, 13); io.WriteString(c, "OK x\n") }, "bad port"},
		{"endless reply", func(c net.Conn) { readN(c, 13); io.WriteString(c, strings.Repeat("O", 100)) }, "longer than 64"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sock := filepath.Join(shortDir(t), "v.sock")
			if c.serve != nil {
				l, err := net.Listen("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				go func() {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					c.serve(conn)
					conn.Close()
				}()
			}
			_, err := DialVsock(testCtx(t), sock, 1024)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("DialVsock = %v, want %q", err, c.want)
			}
		})
	}
}

// TestDialVsockContext: a guest that never answers is bounded by ctx.
func TestDialVsockContext(t *testing.T) {
	sock := filepath.Join(shortDir(t), "v.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	hold := make(chan struct{})
	defer close(hold)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		c, err := l.Accept()
		if err == nil {
			cancel() // the dial is now in its handshake
			<-hold
			c.Close()
		}
	}()
	if _, err := DialVsock(ctx, sock, 1024); !errors.Is(err, context.Canceled) {
		t.Fatalf("DialVsock with cancelled ctx = %v", err)
	}
}

func readN(c net.Conn, n int) {
	buf := make([]byte, n)
	io.ReadFull(c, buf)
}

// TestJailerFailureLeavesNothing: a launch through the jailer that fails
// part-way removes the jail and everything in the run directory.
func TestJailerFailureLeavesNothing(t *testing.T) {
	base := shortDir(t)
	b, _ := fakeBackend(t, fakeConfig{faults: "PUT /vsock=400:Invalid vsock path"})
	b.opts.UseJailer, b.opts.JailerBinary, b.opts.ChrootBase = true, b.opts.Binary, base
	b.opts.UID, b.opts.GID = os.Getuid(), os.Getgid()
	dir := shortDir(t)
	spec := fullSpec(t, dir)
	_, err := b.Launch(testCtx(t), spec)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Fault != "Invalid vsock path" {
		t.Fatalf("Launch = %v, want the vsock fault", err)
	}
	if got := dirNames(t, dir); len(got) != 0 {
		t.Errorf("run directory holds %v", got)
	}
	if _, err := os.Stat(filepath.Join(base, filepath.Base(b.opts.Binary), spec.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left behind: %v", err)
	}
	if _, err := os.Stat(spec.Disks[0].Path); err != nil {
		t.Errorf("disk gone with the jail: %v", err)
	}
}
