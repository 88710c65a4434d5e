package smolvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/vmtest"
)

// testOpts points the SDK at the shared test data dir and the built binary.
func testOpts(t *testing.T) []Option {
	t.Helper()
	vmtest.Require(t)
	return []Option{WithDataDir(vmtest.DataDir(t)), WithExecutable(vmtest.Binary(t))}
}

// bootTiny creates and starts a tiny VM that is deleted when the test ends.
func bootTiny(t *testing.T, cfg Config) *VM {
	t.Helper()
	ctx := context.Background()
	if cfg.Image == "" && cfg.Rootfs == "" {
		cfg.Image = "tiny"
	}
	vm, err := New(ctx, cfg, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := vm.Delete(context.Background()); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
		vm.Close()
	})
	if err := vm.Start(ctx); err != nil {
		logs, _ := os.ReadFile(filepath.Join(vmtest.DataDir(t), "vms", vm.ID(), "console.log"))
		t.Fatalf("%v\nconsole:\n%s", err, logs)
	}
	return vm
}

func TestRunCommands(t *testing.T) {
	vm := bootTiny(t, Config{Env: map[string]string{"FROM_CONFIG": "cfg"}})
	ctx := context.Background()
	tests := []struct {
		name      string
		argv      []string
		opts      RunOptions
		code      int
		stdout    string
		stderrHas string
		timedOut  bool
	}{
		{"echo", []string{"echo", "hello"}, RunOptions{}, 0, "hello\n", "", false},
		{"exit code and stderr", Shell("echo out; echo err >&2; exit 3"), RunOptions{}, 3, "out\n", "err", false},
		{"env from config and call", Shell(`echo "$FROM_CONFIG $X"`), RunOptions{Env: map[string]string{"X": "a 'q' $y"}}, 0, "cfg a 'q' $y\n", "", false},
		{"working dir", []string{"pwd"}, RunOptions{Dir: "/tmp"}, 0, "/tmp\n", "", false},
		{"stdin", []string{"cat"}, RunOptions{Stdin: strings.NewReader("piped\n")}, 0, "piped\n", "", false},
		{"missing command", []string{"no-such-cmd"}, RunOptions{}, 127, "", "not found", false},
		{"hostname", []string{"hostname"}, RunOptions{}, 0, vm.ID() + "\n", "", false},
		{"timeout kills the group", Shell("sleep 60 & sleep 60"), RunOptions{Timeout: time.Second}, 137, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := vm.Run(ctx, tt.argv, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != tt.code || string(res.Stdout) != tt.stdout ||
				!strings.Contains(string(res.Stderr), tt.stderrHas) || res.TimedOut != tt.timedOut {
				t.Fatalf("got code %d stdout %q stderr %q timedout %v; want %d %q %q %v",
					res.ExitCode, res.Stdout, res.Stderr, res.TimedOut, tt.code, tt.stdout, tt.stderrHas, tt.timedOut)
			}
		})
	}
	// The timed-out command's background sleep must be gone too.
	res, err := vm.Run(ctx, Shell("ps | grep -c '[s]leep 60' || true"), RunOptions{})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "0" {
		t.Fatalf("sleeps left after timeout: %q %v", res.Stdout, err)
	}
}

func TestConcurrentRuns(t *testing.T) {
	vm := bootTiny(t, Config{VCPUs: 2})
	// Several handles, as several processes would have.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := Open(context.Background(), vm.ID(), testOpts(t)...)
			if err != nil {
				errs <- err
				return
			}
			defer h.Close()
			want := fmt.Sprint(i)
			res, err := h.Run(context.Background(), Shell("sleep 0.2; echo "+want), RunOptions{})
			if err == nil && strings.TrimSpace(string(res.Stdout)) != want {
				err = fmt.Errorf("run %d printed %q", i, res.Stdout)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	opts := testOpts(t)
	vm := bootTiny(t, Config{})
	// Write to the isolated disk, stop, start again: the file survives.
	if _, err := vm.Run(ctx, Shell("echo kept > /root/f && sync"), RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	info, _ := vm.Info(ctx)
	if info.Status != StatusStopped || info.VMMPID != 0 {
		t.Fatalf("after stop: %+v", info)
	}
	if _, err := vm.Run(ctx, []string{"true"}, RunOptions{}); !errors.Is(err, ErrState) {
		t.Fatalf("run on stopped vm: got %v, want ErrState", err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := vm.Run(ctx, []string{"cat", "/root/f"}, RunOptions{})
	if err != nil || string(res.Stdout) != "kept\n" {
		t.Fatalf("after restart: %q %v", res.Stdout, err)
	}
	if err := vm.Start(ctx); !errors.Is(err, ErrState) {
		t.Fatalf("start of running vm: got %v, want ErrState", err)
	}
	info, _ = vm.Info(ctx)
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.Delete(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: got %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(info.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm dir left after delete: %v", err)
	}
	for _, pid := range []int{info.VMMPID, info.SupervisorPID} {
		if processAlive(pid) {
			t.Fatalf("process %d left after delete", pid)
		}
	}
	if _, err := Open(ctx, info.ID, opts...); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open after delete: %v", err)
	}
}

// TestVMMKilledMidExec kills the VMM while a command runs: the command
// returns an error (no hang), the VM is marked error, cleanup removes it.
func TestVMMKilledMidExec(t *testing.T) {
	ctx := context.Background()
	vm := bootTiny(t, Config{})
	info, _ := vm.Info(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := vm.Run(ctx, []string{"sleep", "60"}, RunOptions{})
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	if err := syscall.Kill(info.VMMPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("run survived its VMM being killed")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run hung after its VMM was killed")
	}
	waitStatus(t, vm, StatusError)
	done2, err := Cleanup(ctx, CleanupOptions{}, testOpts(t)...)
	if err != nil || !containsPrefix(done2, "vm "+vm.ID()) {
		t.Fatalf("cleanup: %v %v", done2, err)
	}
	if _, err := os.Stat(info.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir left after cleanup")
	}
	if processAlive(info.SupervisorPID) || processAlive(info.VMMPID) {
		t.Fatal("process left after cleanup")
	}
}

// TestSupervisorKilled: a VM whose supervisor dies is error on the next look,
// and its VMM does not outlive the supervisor.
func TestSupervisorKilled(t *testing.T) {
	ctx := context.Background()
	vm := bootTiny(t, Config{})
	info, _ := vm.Info(ctx)
	syscall.Kill(info.SupervisorPID, syscall.SIGKILL)
	waitStatus(t, vm, StatusError)
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(info.VMMPID) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if processAlive(info.VMMPID) {
		t.Fatal("VMM outlived its supervisor")
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	opts := testOpts(t)
	before, _ := List(ctx, opts...)
	tests := []struct {
		name string
		cfg  Config
		want error
		msg  string
	}{
		{"invalid name", Config{Name: "Bad_Name!", Image: "tiny"}, ErrInvalid, "name"},
		// A ref that is not local is pulled; this one points at a closed loopback port.
		{"unknown image", Config{Image: "127.0.0.1:9/no-such-image:1"}, nil, "no-such-image"},
		{"missing kernel", Config{Image: "tiny", Kernel: "/nonexistent/vmlinuz"}, ErrInvalid, "/nonexistent/vmlinuz"},
		{"missing rootfs", Config{Rootfs: "/nonexistent/root.ext4"}, ErrInvalid, "/nonexistent/root.ext4"},
		{"memory below minimum", Config{Image: "tiny", MemoryMiB: 64}, ErrInvalid, "minimum"},
		{"bad env key", Config{Image: "tiny", Env: map[string]string{"1X": "y"}}, ErrInvalid, "1X"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm, err := New(ctx, tt.cfg, opts...)
			if err == nil {
				vm.Delete(ctx)
				t.Fatal("created")
			}
			if (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.msg) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %q, want %v mentioning %q on one line", err, tt.want, tt.msg)
			}
		})
	}
	after, _ := List(ctx, opts...)
	if len(after) != len(before) {
		t.Fatalf("bad input left VMs: %d before, %d after", len(before), len(after))
	}
	if _, err := Open(ctx, "vm-does-not-exist", opts...); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open unknown: %v", err)
	}
}

func TestBaseImagePython(t *testing.T) {
	vm := bootTiny(t, Config{Image: "base"})
	res, err := vm.Run(context.Background(), []string{"python3", "-c", "import sys; print(sys.version_info[0], 6*7)"}, RunOptions{})
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "3 42\n" {
		t.Fatalf("python3: %q %q %d %v", res.Stdout, res.Stderr, res.ExitCode, err)
	}
}

func waitStatus(t *testing.T, vm *VM, want Status) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := vm.Info(context.Background())
		if err == nil && info.Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %s (%v), want %s", info.Status, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	// A zombie counts as gone.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
