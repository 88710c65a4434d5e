package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/vmm"
)

// bootBound is how long a boot may take before the test calls it a hang.
// It bounds waiting; it is not a performance assertion.
const bootBound = 60 * time.Second

func TestBootToMarkerAndPowerOff(t *testing.T) {
	env := requireVM(t)
	dir := runDirFor(t)
	b := testBackend(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), bootBound)
	defer cancel()

	inst, err := b.launch(ctx, testSpec(env, dir, "poweroff"))
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	defer inst.Kill()
	if inst.Accel() != b.Accel() {
		t.Errorf("Accel() = %q, backend says %q", inst.Accel(), b.Accel())
	}
	select {
	case <-inst.Done():
	case <-ctx.Done():
		t.Fatalf("guest did not power off within %v", bootBound)
	}
	if err := inst.Err(); err != nil {
		t.Errorf("Err() = %v, want nil after the guest powered off", err)
	}
	console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	if !strings.Contains(string(console), marker) {
		t.Errorf("console log lacks %q", marker)
	}
	if r := inst.ShutdownReason(); r != "guest-shutdown" {
		t.Errorf("ShutdownReason() = %q, want guest-shutdown", r)
	}
	for _, name := range []string{qmpSocket, agentSocket} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after exit (stat: %v)", name, err)
		}
	}
}

// bootSleeping launches a VM whose init sleeps after the marker, and waits
// for the marker.
func bootSleeping(t *testing.T, mode string) (*Instance, context.Context, string) {
	t.Helper()
	env := requireVM(t)
	dir := runDirFor(t)
	b := testBackend(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), bootBound)
	t.Cleanup(cancel)
	inst, err := b.launch(ctx, testSpec(env, dir, mode))
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	t.Cleanup(func() { inst.Kill(); <-inst.Done() })
	if err := waitConsole(ctx, inst, filepath.Join(dir, "console.log"), marker); err != nil {
		t.Fatal(err)
	}
	return inst, ctx, dir
}

func TestGuestPanicEndsVM(t *testing.T) {
	inst, ctx, _ := bootSleeping(t, "exit")
	select {
	case <-inst.Done():
	case <-ctx.Done():
		t.Fatal("qemu still running after the guest kernel panicked")
	}
	if r := inst.ShutdownReason(); r != "guest-reset" && r != "guest-panic" {
		t.Errorf("ShutdownReason() = %q, want guest-reset or guest-panic", r)
	}
}

func TestPauseResumeShutdown(t *testing.T) {
	inst, ctx, _ := bootSleeping(t, "sleep")
	wantStatus := func(want string) {
		t.Helper()
		got, err := inst.Status(ctx)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if got != want {
			t.Fatalf("status = %q, want %q", got, want)
		}
	}
	wantStatus("running")
	if err := inst.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	wantStatus("paused")
	if err := inst.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	wantStatus("running")

	var qe *QMPError
	if err := inst.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command: err = %v, want a CommandNotFound *QMPError", err)
	}

	if err := inst.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case <-inst.Done():
	default:
		t.Fatal("Shutdown returned before QEMU exited")
	}
	if err := inst.Err(); err != nil {
		t.Errorf("Err() after Shutdown = %v, want nil", err)
	}
	if r := inst.ShutdownReason(); r != "host-qmp-quit" {
		t.Errorf("ShutdownReason() = %q, want host-qmp-quit", r)
	}
	if processAlive(inst.PID()) {
		t.Errorf("qemu pid %d still alive", inst.PID())
	}
}

func TestKill(t *testing.T) {
	inst, ctx, _ := bootSleeping(t, "sleep")
	if err := inst.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	select {
	case <-inst.Done():
	case <-ctx.Done():
		t.Fatal("qemu did not exit after SIGKILL")
	}
	if err := inst.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err() = %v, want a killed status", err)
	}
	if err := inst.Kill(); err != nil {
		t.Errorf("second kill: %v, want nil", err)
	}
	if r := inst.ShutdownReason(); r != "" {
		t.Errorf("ShutdownReason() after SIGKILL = %q, want none", r)
	}
	if _, err := inst.DialAgent(ctx); err == nil {
		t.Error("DialAgent succeeded on an exited vm")
	}
}

func TestAgentChannelEcho(t *testing.T) {
	inst, ctx, _ := bootSleeping(t, "echo")
	conn, err := inst.DialAgent(ctx)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	r := bufio.NewReader(conn)
	for _, msg := range []string{"ping", "a second line"} {
		if _, err := conn.Write([]byte(msg + "\n")); err != nil {
			t.Fatalf("write: %v", err)
		}
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read echo of %q: %v", msg, err)
		}
		if got != msg+"\n" {
			t.Fatalf("echo = %q, want %q", got, msg+"\n")
		}
	}
}

func TestBadDiskPath(t *testing.T) {
	env := requireVM(t)
	dir := runDirFor(t)
	b := testBackend(t, dir)
	spec := testSpec(env, dir, "poweroff")
	missing := filepath.Join(dir, "no-such-disk.img")
	spec.Disks = []vmm.Disk{{Path: missing}}
	before := listDir(t, dir)

	_, err := b.Launch(t.Context(), spec)
	if err == nil {
		t.Fatal("Launch with a missing disk succeeded")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, missing) {
		t.Errorf("error = %q, want one line naming %s", msg, missing)
	}
	t.Logf("error: %s", msg)
	if after := listDir(t, dir); after != before {
		t.Errorf("run dir held %q before, %q after", before, after)
	}
	if pids := processesMentioning(dir); len(pids) > 0 {
		t.Errorf("processes left running: %v", pids)
	}
}

// TestBootReliability boots SMOLVM_BOOT_LOOPS times (default 10) in a row;
// every boot must reach the marker and then power off, each within
// bootBound. A hang in either fails.
func TestBootReliability(t *testing.T) {
	env := requireVM(t)
	n := 10
	if s := os.Getenv("SMOLVM_BOOT_LOOPS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("SMOLVM_BOOT_LOOPS=%q is not a positive count", s)
		}
		n = v
	}
	var total, slowest time.Duration
	for i := range n {
		took, err := bootOnce(t, env)
		if err != nil {
			t.Fatalf("boot %d of %d: %v", i+1, n, err)
		}
		total += took
		slowest = max(slowest, took)
	}
	t.Logf("%d boots reached the marker and powered off; mean to marker %v, slowest %v", n, total/time.Duration(n), slowest)
}

// bootOnce boots the poweroff init and returns the time to the marker.
func bootOnce(t *testing.T, env vmEnv) (time.Duration, error) {
	dir := runDirFor(t)
	b := testBackend(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), bootBound)
	defer cancel()
	start := time.Now()
	inst, err := b.launch(ctx, testSpec(env, dir, "poweroff"))
	if err != nil {
		return 0, fmt.Errorf("launch: %w", err)
	}
	defer func() { inst.Kill(); <-inst.Done() }()
	if err := waitConsole(ctx, inst, filepath.Join(dir, "console.log"), marker); err != nil {
		return 0, fmt.Errorf("run dir %s: %w", dir, err)
	}
	took := time.Since(start)
	select {
	case <-inst.Done():
	case <-ctx.Done():
		return 0, fmt.Errorf("run dir %s: guest reached the marker but did not power off within %v", dir, bootBound)
	}
	if err := inst.Err(); err != nil {
		return 0, err
	}
	return took, nil
}

func processAlive(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}

// processesMentioning lists pids whose command line contains s.
func processesMentioning(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, ",")
}

func TestLaunchCanceledLeavesNothing(t *testing.T) {
	env := requireVM(t)
	dir := runDirFor(t)
	b := testBackend(t, dir)
	before := listDir(t, dir)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := b.Launch(ctx, testSpec(env, dir, "poweroff"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Launch = %v, want context.Canceled", err)
	}
	if after := listDir(t, dir); after != before {
		t.Errorf("run dir held %q before, %q after", before, after)
	}
	if pids := processesMentioning(dir); len(pids) > 0 {
		t.Errorf("processes left running: %v", pids)
	}
}
