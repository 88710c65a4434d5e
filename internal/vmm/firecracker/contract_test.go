package firecracker

import (
	"bufio"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/smolvm/smolvm/internal/vmm"
)

// TestLaunch runs the real launch path against the fake: every request in
// order, each valid against the spec, with the values the spec asked for;
// then the agent channel, the console and a clean shutdown.
func TestLaunch(t *testing.T) {
	b, record := fakeBackend(t, fakeConfig{})
	dir := shortDir(t)
	spec := fullSpec(t, dir)
	inst := launch(t, b, spec)

	first, reqs := readRecord(t, record)
	requireNoViolations(t, reqs)
	want := []string{
		"PUT /logger", "PUT /boot-source", "PUT /machine-config",
		"PUT /drives/disk0", "PUT /drives/disk1", "PUT /network-interfaces/eth0",
		"PUT /vsock", "PUT /actions",
	}
	if got := calls(reqs); !slices.Equal(got, want) {
		t.Fatalf("requests:\n got %v\nwant %v", got, want)
	}
	if first.PID != inst.PID() || !slices.Equal(first.Args, []string{"--api-sock", filepath.Join(dir, apiSocket), "--id", spec.ID}) {
		t.Errorf("process pid %d args %q; instance pid %d", first.PID, first.Args, inst.PID())
	}

	var boot bootSource
	bodyOf(t, reqs, "PUT /boot-source", &boot)
	if boot.KernelImagePath != spec.Kernel || boot.InitrdPath != spec.Initrd ||
		!strings.HasPrefix(boot.BootArgs, spec.Cmdline+" ") || !strings.Contains(boot.BootArgs, "console=ttyS0") {
		t.Errorf("boot-source %+v", boot)
	}
	var mc machineConfig
	bodyOf(t, reqs, "PUT /machine-config", &mc)
	if mc.VCPUCount != 2 || mc.MemSizeMiB != 256 {
		t.Errorf("machine-config %+v", mc)
	}
	for n, d := range spec.Disks {
		var got drive
		bodyOf(t, reqs, "PUT /drives/"+driveID(n), &got)
		if got.IsRootDevice || got.IsReadOnly != d.ReadOnly || got.PathOnHost != driveID(n) {
			t.Errorf("drive %d: %+v", n, got)
		}
		if target, _ := os.Readlink(filepath.Join(dir, driveID(n))); target != d.Path {
			t.Errorf("drive link %s -> %q, want %q", driveID(n), target, d.Path)
		}
	}
	var nic networkInterface
	bodyOf(t, reqs, "PUT /network-interfaces/eth0", &nic)
	if nic.HostDevName != "smol0" || nic.GuestMAC != "06:00:ac:10:00:02" ||
		nic.RxRateLimiter.Bandwidth.Size != 1<<20 || nic.TxRateLimiter.Bandwidth.Size != 512<<10 ||
		nic.RxRateLimiter.Bandwidth.RefillTimeMs != 1000 {
		t.Errorf("network interface %+v rx %+v tx %+v", nic, nic.RxRateLimiter, nic.TxRateLimiter)
	}
	var vs vsock
	bodyOf(t, reqs, "PUT /vsock", &vs)
	if vs.GuestCID != 3 || vs.UDSPath != vsockSocket {
		t.Errorf("vsock %+v", vs)
	}

	console, _ := os.ReadFile(spec.ConsoleLog)
	if !strings.Contains(string(console), "fake-firecracker: guest booted") {
		t.Errorf("console log %q lacks the guest's output", console)
	}
	echoAgent(t, inst)
	if st, err := inst.State(testCtx(t)); err != nil || st != "Running" {
		t.Errorf("State = %q, %v", st, err)
	}

	if err := inst.Shutdown(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	<-inst.Done()
	if err := inst.Err(); err != nil {
		t.Errorf("Err after Shutdown = %v", err)
	}
	_, reqs = readRecord(t, record)
	if last := reqs[len(reqs)-1]; string(last.Body) != `{"action_type":"SendCtrlAltDel"}` {
		t.Errorf("last request %s %s, want SendCtrlAltDel", last.Path, last.Body)
	}
	// Sockets and links go with firecracker; the logs stay.
	if got := dirNames(t, dir); !slices.Equal(got, []string{apiLog, vmmLog}) {
		t.Errorf("run directory after exit holds %v", got)
	}
}

// echoAgent dials the agent and checks that bytes sent with the OK reply
// survive, and that the channel carries data both ways.
func echoAgent(t *testing.T, inst *Instance) {
	t.Helper()
	c, err := inst.DialAgent(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || line != "hello from guest\n" {
		t.Fatalf("first line %q, %v: bytes read ahead were lost", line, err)
	}
	io.WriteString(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo %q, %v", line, err)
	}
}

func TestShutdownKillsAfterGrace(t *testing.T) {
	b, record := fakeBackend(t, fakeConfig{ignoreCAD: true})
	inst := launch(t, b, fullSpec(t, shortDir(t)))
	if err := inst.Shutdown(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	<-inst.Done()
	if err := inst.Err(); err != nil {
		t.Errorf("Err after Shutdown escalated to SIGKILL = %v, want nil", err)
	}
	if err := syscall.Kill(inst.PID(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("firecracker still there: kill(0) = %v", err)
	}
	_, reqs := readRecord(t, record)
	requireNoViolations(t, reqs)
	if !slices.Contains(calls(reqs), "PUT /actions") || string(reqs[len(reqs)-1].Body) != `{"action_type":"SendCtrlAltDel"}` {
		t.Errorf("Ctrl-Alt-Del was not sent first: %v", calls(reqs))
	}
}

func TestKill(t *testing.T) {
	b, _ := fakeBackend(t, fakeConfig{})
	inst := launch(t, b, fullSpec(t, shortDir(t)))
	if err := inst.Kill(); err != nil {
		t.Fatal(err)
	}
	<-inst.Done()
	if err := inst.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err after Kill = %v, want the signal", err)
	}
	if err := inst.Kill(); err != nil {
		t.Errorf("second Kill = %v", err)
	}
	if _, err := inst.DialAgent(testCtx(t)); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("DialAgent after exit = %v", err)
	}
}

// TestPauseSnapshotRestore snapshots a paused VM and restores it into a new
// run directory with other disks and another tap, with and without rate
// limits (which a load cannot set, so they are patched before resuming).
func TestPauseSnapshotRestore(t *testing.T) {
	b, record := fakeBackend(t, fakeConfig{})
	spec := fullSpec(t, shortDir(t))
	inst := launch(t, b, spec)
	ctx := testCtx(t)
	if err := inst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := inst.State(ctx); st != "Paused" {
		t.Fatalf("state after Pause %q", st)
	}
	snap := filepath.Join(t.TempDir(), "snap")
	if err := inst.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := inst.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := inst.State(ctx); st != "Running" {
		t.Fatalf("state after Resume %q", st)
	}
	_, reqs := readRecord(t, record)
	requireNoViolations(t, reqs)
	var sc snapshotCreate
	bodyOf(t, reqs, "PUT /snapshot/create", &sc)
	if sc.SnapshotType != "Full" || sc.SnapshotPath != filepath.Join(snap, SnapshotStateFile) || sc.MemFilePath != filepath.Join(snap, SnapshotMemFile) {
		t.Errorf("snapshot/create %+v", sc)
	}
	if got := calls(reqs)[len(reqs)-5:]; !slices.Equal(got, []string{"PATCH /vm", "GET /", "PUT /snapshot/create", "PATCH /vm", "GET /"}) {
		t.Errorf("pause/snapshot/resume calls %v", got)
	}

	for _, limited := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "rate-limited"}[limited], func(t *testing.T) {
			b, record := fakeBackend(t, fakeConfig{})
			spec2 := fullSpec(t, shortDir(t))
			spec2.ID = "vm-restored"
			spec2.Net[0].Tap = "smol9"
			if !limited {
				spec2.Net[0].RxRateBps, spec2.Net[0].TxRateBps = 0, 0
			}
			vi, err := b.Restore(testCtx(t), spec2, snap)
			if err != nil {
				t.Fatal(err)
			}
			r := vi.(*Instance)
			t.Cleanup(func() { r.Kill(); <-r.Done() })
			_, reqs := readRecord(t, record)
			requireNoViolations(t, reqs)
			want := []string{"PUT /logger", "PUT /snapshot/load"}
			if limited {
				want = append(want, "PATCH /network-interfaces/eth0", "PATCH /vm")
			}
			if got := calls(reqs); !slices.Equal(got, want) {
				t.Fatalf("restore requests %v, want %v", got, want)
			}
			var load snapshotLoad
			bodyOf(t, reqs, "PUT /snapshot/load", &load)
			if load.ResumeVM == limited || load.TrackDirtyPages || load.MemBackend.BackendType != "File" ||
				load.MemBackend.BackendPath != filepath.Join(snap, SnapshotMemFile) ||
				len(load.NetworkOverrides) != 1 || load.NetworkOverrides[0] != (networkOverride{"eth0", "smol9"}) ||
				load.VsockOverride == nil || load.VsockOverride.UDSPath != vsockSocket {
				t.Errorf("snapshot/load %+v", load)
			}
			echoAgent(t, r)
			if st, _ := r.State(testCtx(t)); st != "Running" {
				t.Errorf("restored vm state %q", st)
			}
		})
	}
}

// TestErrorReplies maps firecracker's failure replies to *APIError that
// name the request, and shows the fake enforces the spec on raw requests.
func TestErrorReplies(t *testing.T) {
	b, _ := fakeBackend(t, fakeConfig{})
	inst := launch(t, b, fullSpec(t, shortDir(t)))
	ctx := testCtx(t)

	err := inst.Snapshot(ctx, t.TempDir())
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.Fault != "Cannot create snapshot: the microVM is not paused" {
		t.Fatalf("snapshot of a running vm: %v", err)
	}
	if !strings.Contains(err.Error(), "PUT /snapshot/create") {
		t.Errorf("error %q does not name the request", err)
	}

	err = inst.api.put(ctx, "/machine-config", map[string]int{"vcpu_cont": 2, "mem_size_mib": 128})
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.Fault, `contract:`) {
		t.Fatalf("off-spec request: %v", err)
	}
}

// TestLaunchFailuresLeaveNothing: a failure reply part-way through
// configuration, and a firecracker that dies at once, both end the launch
// with a clear error, the process gone and the run directory as it was.
func TestLaunchFailuresLeaveNothing(t *testing.T) {
	cases := []struct {
		name    string
		cfg     fakeConfig
		wantErr []string
	}{
		{"fault reply", fakeConfig{faults: "PUT /drives/disk1=400:Unable to open the block device"},
			[]string{"PUT /drives/disk1", "status 400: Unable to open the block device"}},
		{"server error", fakeConfig{faults: "PUT /actions=500:Internal error while starting microVM"},
			[]string{"PUT /actions", "status 500"}},
		{"exits at once", fakeConfig{exit: "fake: bad argument --api-sock"},
			[]string{"exited before opening its api socket", "fake: bad argument --api-sock"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, record := fakeBackend(t, c.cfg)
			dir := shortDir(t)
			spec := fullSpec(t, dir)
			_, err := b.Launch(testCtx(t), spec)
			if err == nil {
				t.Fatal("Launch succeeded")
			}
			for _, w := range c.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if c.cfg.faults != "" {
				var apiErr *APIError
				if !errors.As(err, &apiErr) {
					t.Errorf("error %v is not an *APIError", err)
				}
			}
			if got := dirNames(t, dir); len(got) != 0 {
				t.Errorf("left behind in the run directory: %v", got)
			}
			if _, err := os.Stat(spec.ConsoleLog); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("console log left behind: %v", err)
			}
			if first, _ := readRecord(t, record); first.PID != 0 {
				if err := syscall.Kill(first.PID, 0); !errors.Is(err, syscall.ESRCH) {
					t.Errorf("firecracker %d still running: %v", first.PID, err)
				}
			}
		})
	}
}

func TestLaunchRejectsBadSpecs(t *testing.T) {
	b, record := fakeBackend(t, fakeConfig{})
	dir := shortDir(t)
	cases := []struct {
		name string
		edit func(*vmm.Spec)
		want string
	}{
		{"qcow2 disk", func(s *vmm.Spec) { s.Disks[0].Format = "qcow2" }, "raw disks only"},
		{"user networking", func(s *vmm.Spec) { s.Net[0].Mode = "user" }, "tap devices only"},
		{"tap without name", func(s *vmm.Spec) { s.Net[0].Tap = "" }, "no tap device"},
		{"too many vcpus", func(s *vmm.Spec) { s.VCPUs = 33 }, "vcpus must be 1-32"},
		{"no kernel", func(s *vmm.Spec) { s.Kernel = "" }, "no kernel"},
		{"relative dir", func(s *vmm.Spec) { s.Dir = "run/vm" }, "not absolute"},
		{"missing dir", func(s *vmm.Spec) { s.Dir = filepath.Join(dir, "nope") }, "does not exist"},
		{"long dir", func(s *vmm.Spec) { s.Dir = "/" + strings.Repeat("d", 110) }, "too long"},
		{"no id", func(s *vmm.Spec) { s.ID = "" }, "no id"},
		{"negative rate", func(s *vmm.Spec) { s.Net[0].TxRateBps = -1 }, "negative"},
		{"missing kernel file", func(s *vmm.Spec) { s.Kernel = "/nonexistent/vmlinux" }, "PUT /boot-source"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := fullSpec(t, dir)
			c.edit(&spec)
			_, err := b.Launch(testCtx(t), spec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Launch error %v, want %q", err, c.want)
			}
			if got := dirNames(t, dir); len(got) != 0 {
				t.Errorf("left behind: %v", got)
			}
		})
	}
	if _, err := os.Stat(record); err == nil {
		_, reqs := readRecord(t, record)
		requireNoViolations(t, reqs)
	}
}

func TestNetNSNeedsJailer(t *testing.T) {
	b, _ := fakeBackend(t, fakeConfig{opts: Options{NetNS: "smolvm-test"}})
	dir := shortDir(t)
	_, err := b.Launch(testCtx(t), fullSpec(t, dir))
	if err == nil || !strings.Contains(err.Error(), "needs the jailer") {
		t.Fatalf("Launch with NetNS and no jailer: %v", err)
	}
	if got := dirNames(t, dir); len(got) != 0 {
		t.Errorf("left behind: %v", got)
	}
}

// TestShutdownPaused: a paused guest cannot take Ctrl-Alt-Del; firecracker
// refuses it and Shutdown kills at once instead of waiting out the grace.
func TestShutdownPaused(t *testing.T) {
	b, record := fakeBackend(t, fakeConfig{})
	inst := launch(t, b, fullSpec(t, shortDir(t)))
	ctx := testCtx(t)
	if err := inst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Err(); err != nil {
		t.Errorf("Err = %v", err)
	}
	_, reqs := readRecord(t, record)
	if last := reqs[len(reqs)-1]; last.Status != 400 || string(last.Body) != `{"action_type":"SendCtrlAltDel"}` {
		t.Errorf("last request %s %s -> %d, want a refused Ctrl-Alt-Del", last.Path, last.Body, last.Status)
	}
}
