package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// launcherEnv makes TestHelperLaunchAndExit act: it is the launching
// process that exits with its VM still running.
const launcherEnv = "SMOLVM_QEMU_TEST_LAUNCHER"

// TestQEMUDiesWithLauncher runs a child process that launches a VM and
// exits without stopping it; Pdeathsig must take QEMU down with it.
func TestQEMUDiesWithLauncher(t *testing.T) {
	requireVM(t)
	dir := runDirFor(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLaunchAndExit$", "-test.v")
	cmd.Env = append(os.Environ(), launcherEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("launcher: %v\n%s", err, out)
	}
	_, after, ok := strings.Cut(string(out), "QEMU_PID=")
	if !ok {
		t.Fatalf("launcher printed no pid:\n%s", out)
	}
	pid, err := strconv.Atoi(strings.Fields(after)[0])
	if err != nil {
		t.Fatalf("launcher pid: %v", err)
	}
	if err := waitPidExit(pid, bootBound); err != nil {
		unix.Kill(pid, unix.SIGKILL)
		t.Fatalf("qemu outlived its launcher: %v", err)
	}
}

// TestHelperLaunchAndExit is the child of TestQEMUDiesWithLauncher.
func TestHelperLaunchAndExit(t *testing.T) {
	dir := os.Getenv(launcherEnv)
	if dir == "" {
		t.Skip("helper process for TestQEMUDiesWithLauncher")
	}
	env := requireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootBound)
	defer cancel()
	inst, err := New(Options{}).launch(ctx, testSpec(env, dir, "sleep"))
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	fmt.Printf("QEMU_PID=%d\n", inst.PID())
	os.Exit(0) // leave the VM running: only Pdeathsig may end it
}

// waitPidExit waits for pid to exit (a zombie counts) via a pidfd.
func waitPidExit(pid int, bound time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err == unix.ESRCH {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(bound.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("polling pidfd: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("pid %d still running after %v", pid, bound)
		}
		return nil
	}
}
