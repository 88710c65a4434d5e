package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
)

const (
	vmKernel  = "/boot/vmlinuz-6.1.0-57-cloud-amd64"
	vmModules = "/lib/modules/6.1.0-57-cloud-amd64"
)

// requireVM skips unless SMOLVM_VM_TESTS=1, and then fails if a
// prerequisite is missing.
func requireVM(t testing.TB) {
	t.Helper()
	if os.Getenv("SMOLVM_VM_TESTS") != "1" {
		t.Skip("boots QEMU VMs (slow under TCG); set SMOLVM_VM_TESTS=1 to run")
	}
	for _, p := range []string{vmKernel, vmModules, "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("VM test prerequisite missing: %v", err)
		}
	}
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.ext4", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("VM test prerequisite missing: %v", err)
		}
	}
}

// vmDir is a short scratch directory (socket paths must fit in sun_path),
// kept when the test fails.
func vmDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "agentvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s for inspection", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

func run(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// buildGuest builds the static agent, its initramfs and a busybox root disk.
func buildGuest(t testing.TB, dir string) (initrd, disk string) {
	t.Helper()
	agentBin := filepath.Join(dir, "agent")
	run(t, []string{"CGO_ENABLED=0"}, "go", "build", "-o", agentBin, "./testdata/agentmain")
	initrd = run(t, nil, "go", "run", "./testdata/mkinitramfs", filepath.Join(dir, "cache"), agentBin, vmModules)
	root := filepath.Join(dir, "rootdir")
	for _, d := range []string{"bin", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(run(t, nil, "/usr/bin/busybox", "--list")) {
		if applet != "busybox" {
			os.Symlink("busybox", filepath.Join(root, "bin", applet))
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disk = filepath.Join(dir, "root.img")
	run(t, nil, "mkfs.ext4", "-q", "-F", "-d", root, disk, "64M")
	return initrd, disk
}

// hostTSCkHz reads the host's TSC frequency (the "cpu MHz" line): without
// tsc_early_khz a TCG guest sometimes hangs calibrating it.
func hostTSCkHz(t testing.TB) int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	t.Fatal("no cpu MHz in /proc/cpuinfo")
	return 0
}

// testVM is one QEMU process and its agent socket.
type testVM struct {
	cmd     *exec.Cmd
	sock    string
	started time.Time
	exited  chan error
}

func bootVM(t testing.TB, dir, initrd, disk, extraCmdline string) *testVM {
	t.Helper()
	sock := filepath.Join(dir, "agent.sock")
	cmdline := fmt.Sprintf("console=ttyS0 panic=-1 tsc_early_khz=%d smolvm.root=/dev/vda smolvm.hostname=t1 %s", hostTSCkHz(t), extraCmdline)
	args := []string{
		"-M", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on", "-cpu", "max",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-m", "256",
		"-kernel", vmKernel, "-initrd", initrd, "-append", cmdline,
		"-serial", "file:" + filepath.Join(dir, "console.log"),
		"-drive", "id=root,file=" + disk + ",format=raw,if=none", "-device", "virtio-blk-device,drive=root",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + agentproto.PortName,
	}
	vm := &testVM{cmd: exec.Command("qemu-system-x86_64", args...), sock: sock, exited: make(chan error, 1)}
	var stderr bytes.Buffer
	vm.cmd.Stderr = &stderr
	vm.started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { vm.exited <- vm.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-vm.exited:
		default:
			vm.cmd.Process.Kill()
			<-vm.exited
		}
		if t.Failed() {
			t.Logf("qemu-system-x86_64 %s\nqemu stderr: %s", strings.Join(args, " "), stderr.String())
			if b, err := os.ReadFile(filepath.Join(dir, "console.log")); err == nil {
				t.Logf("console:\n%s", b)
			}
		}
	})
	return vm
}

// connect dials the agent socket (QEMU creates it shortly after start),
// writes SyncLine as a host should, and reads the hello, bounded by ctx.
func (vm *testVM) connect(ctx context.Context, t testing.TB) (*testAgent, time.Duration) {
	t.Helper()
	var conn net.Conn
	for {
		var err error
		var d net.Dialer
		conn, err = d.DialContext(ctx, "unix", vm.sock)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("connecting to %s: %v", vm.sock, err)
		case err := <-vm.exited:
			t.Fatalf("qemu exited early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := io.WriteString(conn, SyncLine); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(conn)
	h, err := agentproto.ReadHello(br)
	if err != nil {
		t.Fatalf("reading hello: %v", err)
	}
	helloAt := time.Since(vm.started)
	conn.SetReadDeadline(time.Time{})
	sess := newClientSession(t, br, conn)
	t.Cleanup(func() { sess.Close() })
	return &testAgent{sess: sess, hello: h, hostConn: conn}, helloAt
}

func TestVMBoot(t *testing.T) {
	requireVM(t)
	dir := vmDir(t)
	initrd, disk := buildGuest(t, dir)
	if fi, err := os.Stat(initrd); err == nil {
		t.Logf("initramfs %s: %d bytes", filepath.Base(initrd), fi.Size())
	}
	tests := []struct {
		name    string
		cmdline string
		mounts  []string // lines (prefixes) /proc/mounts must hold
		sigint  bool     // power off by SIGINT to PID 1 (what ctrl-alt-del sends) instead of the poweroff op
	}{
		{"rw root", "", []string{"/dev/vda / ext4 rw"}, false},
		{"read-only root under overlay", "smolvm.rootro=1", []string{"overlay / overlay rw"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			vm := bootVM(t, dir, initrd, disk, tt.cmdline)
			ta, helloAt := vm.connect(ctx, t)
			res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"echo", "hi"}}, nil, nil)
			firstExec := time.Since(vm.started)
			t.Logf("hello %v after QEMU start (guest: agent started at %d ms, ready at %d ms); first exec reply %v",
				helloAt.Round(time.Millisecond), ta.hello.BootMillis, ta.hello.ReadyMs, firstExec.Round(time.Millisecond))
			if res.Err != nil || res.Stdout != "hi\n" || res.Exit.Code != 0 {
				t.Fatalf("echo hi: %+v", res)
			}
			if ta.hello.Hostname != "t1" || ta.hello.Kernel == "" {
				t.Errorf("hello = %+v", ta.hello)
			}
			checkGuest(t, ta, tt.mounts)

			// A host that hangs up and comes back at once (too quickly for
			// the guest to notice) gets a new hello and session.
			ta.sess.Close()
			ta.hostConn.Close()
			ta, _ = vm.connect(ctx, t)
			if res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"true"}}, nil, nil); res.Err != nil || res.Exit.Code != 0 {
				t.Fatalf("exec after reconnecting: %+v", res)
			}

			if tt.sigint {
				// The reply may or may not arrive before the guest goes.
				ta.exec(t, agentproto.ExecRequest{Argv: []string{"kill", "-INT", "1"}}, nil, nil)
			} else {
				c := ta.request(t, agentproto.Request{Op: agentproto.OpPowerOff})
				var resp agentproto.Response
				if err := c.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
					t.Fatalf("poweroff: %v", err)
				}
			}
			select {
			case err := <-vm.exited:
				if err != nil {
					t.Errorf("qemu exited with %v after poweroff", err)
				}
				t.Logf("qemu exited %v after start", time.Since(vm.started).Round(time.Millisecond))
				vm.exited <- err // for the cleanup
			case <-ctx.Done():
				t.Fatal("qemu still running after poweroff")
			}
		})
	}
}

// checkGuest runs the end-to-end checks inside a booted guest.
func checkGuest(t *testing.T, ta *testAgent, mounts []string) {
	t.Helper()
	tests := []struct {
		argv   []string
		user   string
		stdout string // exact, unless has is set
		has    []string
		stderr string
		code   int
	}{
		{argv: []string{"hostname"}, stdout: "t1\n"},
		{argv: []string{"cat", "/proc/mounts"}, has: append([]string{
			"proc /proc proc", "sysfs /sys sysfs", "devtmpfs /dev devtmpfs", "devpts /dev/pts devpts",
			"shm /dev/shm tmpfs", "tmpfs /run tmpfs", "tmpfs /tmp tmpfs"}, mounts...)},
		{argv: []string{"sh", "-c", "exit 7"}, code: 7},
		{argv: []string{"nosuchcommand"}, stderr: "nosuchcommand: command not found\n", code: 127},
		{argv: []string{"id", "-u"}, user: "nobody", stdout: "65534\n"},
		{argv: []string{"sh", "-c", "echo x > /root/f && cat /root/f && ls /dev/ptmx /dev/fd/ >/dev/null && echo ok"}, stdout: "x\nok\n"},
		{argv: []string{"ping", "-c", "1", "-W", "5", "127.0.0.1"}, has: []string{"1 packets received"}},
		// Signals that would end a Go program must not end PID 1, and its
		// children must not inherit them ignored. (SIGINT is ctrl-alt-del:
		// a clean power-off, like systemd's; not sent here.)
		{argv: []string{"sh", "-c", "exec 2>/dev/null; for s in TERM HUP QUIT USR1 USR2 PWR ALRM; do kill -$s 1; done; sleep 0.2; echo alive; " +
			"sleep 100 & kill -TERM $!; wait $!; echo $?"}, stdout: "alive\n143\n"},
	}
	for _, tt := range tests {
		res := ta.exec(t, agentproto.ExecRequest{Argv: tt.argv, User: tt.user}, nil, nil)
		if res.Err != nil {
			t.Errorf("%v: %v", tt.argv, res.Err)
			continue
		}
		ok := res.Exit.Code == tt.code && res.Stderr == tt.stderr
		if tt.has == nil {
			ok = ok && res.Stdout == tt.stdout
		}
		for _, h := range tt.has {
			ok = ok && strings.Contains(res.Stdout, h)
		}
		if !ok {
			t.Errorf("%v: stdout %q stderr %q exit %+v", tt.argv, res.Stdout, res.Stderr, res.Exit)
		}
	}
}

// BenchmarkBootToFirstExec boots the busybox guest again and again and
// reports the time from starting QEMU to the agent's hello and to the first
// exec's reply, and from the poweroff request to QEMU's exit.
func BenchmarkBootToFirstExec(b *testing.B) {
	requireVM(b)
	dir := vmDir(b)
	initrd, disk := buildGuest(b, dir)
	var hello, first, off time.Duration
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		vm := bootVM(b, dir, initrd, disk, "")
		ta, helloAt := vm.connect(ctx, b)
		if res := ta.exec(b, agentproto.ExecRequest{Argv: []string{"true"}}, nil, nil); res.Err != nil {
			b.Fatal(res.Err)
		}
		firstAt := time.Since(vm.started)
		c := ta.request(b, agentproto.Request{Op: agentproto.OpPowerOff})
		var resp agentproto.Response
		if err := c.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		select {
		case err := <-vm.exited:
			vm.exited <- err
		case <-ctx.Done():
			b.Fatal("qemu still running after poweroff")
		}
		hello, first, off = hello+helloAt, first+firstAt, off+time.Since(t0)
		ta.sess.Close()
		cancel()
	}
	n := float64(b.N)
	b.ReportMetric(hello.Seconds()*1000/n, "ms-to-hello")
	b.ReportMetric(first.Seconds()*1000/n, "ms-to-first-exec")
	b.ReportMetric(off.Seconds()*1000/n, "ms-poweroff")
}
