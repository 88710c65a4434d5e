package smolvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bootQuiet boots a tiny VM without a network: nothing here needs one
// (SSH goes over the agent channel).
func bootQuiet(t *testing.T, cfg Config) *VM {
	t.Helper()
	cfg.Net = NetNone
	return bootTiny(t, cfg)
}

// countWriter counts bytes and keeps none.
type countWriter struct {
	mu sync.Mutex
	n  int64
}

func (w *countWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.n += int64(len(p))
	w.mu.Unlock()
	return len(p), nil
}

func TestExecStreamingVM(t *testing.T) {
	vm := bootQuiet(t, Config{MemoryMiB: 512})
	ctx := context.Background()

	t.Run("100 MiB streams without growing memory", func(t *testing.T) {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var out countWriter
		res, err := vm.Run(ctx, Shell("head -c 104857600 /dev/zero"), RunOptions{Stdout: &out})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%v %+v", err, res)
		}
		runtime.ReadMemStats(&after)
		if out.n != 100<<20 {
			t.Fatalf("got %d bytes, want %d", out.n, 100<<20)
		}
		if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 32<<20 {
			t.Fatalf("heap grew by %d bytes while streaming", grew)
		}
	})

	t.Run("endless output is capped and the command killed", func(t *testing.T) {
		res, err := vm.Run(ctx, []string{"yes"}, RunOptions{Timeout: 3 * time.Second, MaxOutput: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Truncated || !res.TimedOut || len(res.Stdout) != 1<<20 {
			t.Fatalf("truncated %v timed out %v, %d bytes kept", res.Truncated, res.TimedOut, len(res.Stdout))
		}
		// Nothing left running in the guest.
		ps, err := vm.Run(ctx, Shell("ps | grep -c '[y]es'"), RunOptions{})
		if err != nil || strings.TrimSpace(string(ps.Stdout)) != "0" {
			t.Fatalf("yes still runs: %q %v", ps.Stdout, err)
		}
	})

	t.Run("stdin and a second exec while one streams", func(t *testing.T) {
		in := bytes.Repeat([]byte("stdin data\n"), 100000)
		sum := sha256.Sum256(in)
		var wg sync.WaitGroup
		wg.Add(1)
		var slowErr error
		go func() {
			defer wg.Done()
			_, slowErr = vm.Run(ctx, Shell("for i in 1 2 3 4 5 6; do echo tick; sleep 0.5; done"), RunOptions{Stdout: io.Discard})
		}()
		res, err := vm.Run(ctx, Shell("sha256sum | cut -d' ' -f1"), RunOptions{Stdin: bytes.NewReader(in)})
		if err != nil || strings.TrimSpace(string(res.Stdout)) != fmt.Sprintf("%x", sum) {
			t.Fatalf("sha256 of stdin: %q %v", res.Stdout, err)
		}
		wg.Wait()
		if slowErr != nil {
			t.Fatal(slowErr)
		}
	})

	t.Run("a process closing stdout early", func(t *testing.T) {
		res, err := vm.Run(ctx, Shell("exec >&-; sleep 0.2; echo err >&2; exit 2"), RunOptions{})
		if err != nil || res.ExitCode != 2 || string(res.Stderr) != "err\n" {
			t.Fatalf("%v %+v", err, res)
		}
	})
}

func TestFilesVM(t *testing.T) {
	vm := bootQuiet(t, Config{MemoryMiB: 512})
	ctx := context.Background()
	body := bytes.Repeat([]byte{0, 1, 2, 'x', '\n'}, 300000)
	if err := vm.MkdirAll(ctx, "/tmp/a/b", 0o750); err != nil {
		t.Fatal(err)
	}
	if err := vm.WriteFile(ctx, "/tmp/a/b/f", body, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := vm.ReadFile(ctx, "/tmp/a/b/f")
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	st, err := vm.Stat(ctx, "/tmp/a/b/f")
	if err != nil || st.Size != int64(len(body)) || st.Mode != 0o600 {
		t.Fatalf("stat %+v %v", st, err)
	}
	ents, err := vm.ListDir(ctx, "/tmp/a")
	if err != nil || len(ents) != 1 || ents[0].Name != "b" || !ents[0].IsDir() || ents[0].Mode.Perm() != 0o750 {
		t.Fatalf("listdir %+v %v", ents, err)
	}

	t.Run("errors name the path", func(t *testing.T) {
		tests := []struct {
			name string
			do   func() error
			is   error
			path string
		}{
			{"stat missing", func() error { _, err := vm.Stat(ctx, "/nope"); return err }, fs.ErrNotExist, "/nope"},
			{"read missing", func() error { _, err := vm.ReadFile(ctx, "/nope/x"); return err }, fs.ErrNotExist, "/nope/x"},
			{"list a file", func() error { _, err := vm.ListDir(ctx, "/tmp/a/b/f"); return err }, syscall.ENOTDIR, "/tmp/a/b/f"},
			{"remove non-empty", func() error { return vm.Remove(ctx, "/tmp/a") }, syscall.ENOTEMPTY, "/tmp/a"},
			{"write into missing dir", func() error { return vm.WriteFile(ctx, "/nope/x", nil, 0) }, fs.ErrNotExist, "/nope"},
			{"read-only filesystem", func() error {
				if _, err := vm.Run(ctx, Shell("mkdir -p /mnt/ro && mount -t tmpfs -o ro tmpfs /mnt/ro"), RunOptions{}); err != nil {
					return err
				}
				return vm.WriteFile(ctx, "/mnt/ro/x", []byte("x"), 0)
			}, nil, "/mnt/ro/x"},
		}
		for _, tt := range tests {
			err := tt.do()
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("%s: got %v, want %v naming %s", tt.name, err, tt.is, tt.path)
			}
		}
	})

	t.Run("a full disk says so", func(t *testing.T) {
		if res, err := vm.Run(ctx, Shell("mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small"), RunOptions{}); err != nil || res.ExitCode != 0 {
			t.Fatalf("%v %s", err, res.Stderr)
		}
		err := vm.WriteFile(ctx, "/mnt/small/big", make([]byte, 4<<20), 0)
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "/mnt/small/big") {
			t.Fatalf("got %v, want ENOSPC naming the path", err)
		}
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "big"), make([]byte, 4<<20), 0o644)
		_, err = vm.Upload(ctx, filepath.Join(dir, "big"), "/mnt/small/")
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "/mnt/small/big") {
			t.Fatalf("upload: got %v, want ENOSPC naming the path", err)
		}
		if ents, err := vm.ListDir(ctx, "/mnt/small"); err != nil || len(ents) != 0 {
			t.Errorf("a failed write left %+v (%v)", ents, err)
		}
	})

	t.Run("upload and download keep modes, times and links", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "tree")
		os.MkdirAll(filepath.Join(src, "sub"), 0o755)
		os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
		os.Symlink("sub/run.sh", filepath.Join(src, "link"))
		old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		os.Chtimes(filepath.Join(src, "sub", "run.sh"), old, old)
		if _, err := vm.Upload(ctx, src, "/tmp/"); err != nil {
			t.Fatal(err)
		}
		res, err := vm.Run(ctx, []string{"/tmp/tree/link"}, RunOptions{})
		if err != nil || string(res.Stdout) != "ran\n" {
			t.Fatalf("running the uploaded script through its link: %q %v", res.Stdout, err)
		}
		st, err := vm.Stat(ctx, "/tmp/tree/sub/run.sh")
		if err != nil || !st.ModTime.Equal(old) || st.Mode.Perm() != 0o755 {
			t.Fatalf("stat %+v %v", st, err)
		}
		dst := t.TempDir()
		if _, err := vm.Download(ctx, "/tmp/tree", filepath.Join(dst, "copy")); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dst, "copy", "sub", "run.sh"))
		if err != nil || !fi.ModTime().Equal(old) || fi.Mode().Perm() != 0o755 {
			t.Fatalf("downloaded: %v %v", fi, err)
		}
		if l, _ := os.Readlink(filepath.Join(dst, "copy", "link")); l != "sub/run.sh" {
			t.Fatalf("link is %q", l)
		}
	})

	t.Run("a guest symlink cannot make the host write outside", func(t *testing.T) {
		victim := filepath.Join(t.TempDir(), "victim")
		os.WriteFile(victim, []byte("keep"), 0o644)
		script := fmt.Sprintf("mkdir -p /tmp/evil && ln -sf %s /tmp/evil/f && ln -sfn %s /tmp/evil/d", victim, filepath.Dir(victim))
		if _, err := vm.Run(ctx, Shell(script), RunOptions{}); err != nil {
			t.Fatal(err)
		}
		dst := t.TempDir()
		if _, err := vm.Download(ctx, "/tmp/evil", dst); err != nil {
			t.Fatal(err)
		}
		// A second download over the first writes through nothing.
		if _, err := vm.Download(ctx, "/tmp/a/b/f", filepath.Join(dst, "evil", "f")); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "keep" {
			t.Fatalf("the victim outside the destination changed: %q", b)
		}
	})

	t.Run("a download of a path that vanishes midway fails and leaves nothing", func(t *testing.T) {
		if res, err := vm.Run(ctx, Shell("mkdir -p /tmp/vanish && for i in $(seq 1 100); do head -c 1048576 /dev/zero > /tmp/vanish/f$i; done"), RunOptions{}); err != nil || res.ExitCode != 0 {
			t.Fatalf("%v %s", err, res.Stderr)
		}
		if _, err := vm.StartProcess(ctx, Shell("sleep 0.3; rm -rf /tmp/vanish"), ProcessOptions{}); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "copy")
		_, err := vm.Download(ctx, "/tmp/vanish", dst)
		if err == nil || !strings.Contains(err.Error(), "/tmp/vanish") {
			t.Fatalf("got %v, want an error naming /tmp/vanish", err)
		}
		if _, serr := os.Lstat(dst); !errors.Is(serr, fs.ErrNotExist) {
			t.Fatalf("a partial copy was left: %v (download error: %v)", serr, err)
		}
	})
}

func TestEnvVM(t *testing.T) {
	vm := bootQuiet(t, Config{Env: map[string]string{"FROM_CFG": "cfg", "DROP": "x"}})
	ctx := context.Background()
	tricky := "it's \"quoted\"\n$HOME `id` \\ end"
	if err := vm.SetEnv(ctx, map[string]string{"TRICKY": tricky, "FROM_CFG": "overridden"}); err != nil {
		t.Fatal(err)
	}
	if err := vm.UnsetEnv(ctx, "DROP"); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetEnv(ctx, map[string]string{"1BAD": "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad key: %v", err)
	}
	env, err := vm.ListEnv(ctx)
	if err != nil || env["TRICKY"] != tricky || env["FROM_CFG"] != "overridden" || len(env) != 2 {
		t.Fatalf("ListEnv = %q, %v", env, err)
	}
	res, err := vm.Run(ctx, Shell(`printf '%s|%s|%s|%s' "$TRICKY" "$FROM_CFG" "${DROP-unset}" "$CALL"`),
		RunOptions{Env: map[string]string{"CALL": "c", "FROM_CFG": "call wins"}})
	if want := tricky + "|call wins|unset|c"; err != nil || string(res.Stdout) != want {
		t.Fatalf("exec saw %q (%v), want %q", res.Stdout, err, want)
	}
}

func TestProcessesVM(t *testing.T) {
	vm := bootQuiet(t, Config{})
	ctx := context.Background()
	p, err := vm.StartProcess(ctx, Shell("echo started; sleep 1; echo done; echo oops >&2; exit 3"), ProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Another handle, as from another process: the process is the guest's.
	other, err := Open(ctx, vm.ID(), testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var out, errb bytes.Buffer
	if _, err := other.ProcessOutput(ctx, p.ID, true, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if out.String() != "started\ndone\n" || errb.String() != "oops\n" {
		t.Fatalf("output %q / %q", out.String(), errb.String())
	}
	got, err := other.WaitProcess(ctx, p.ID)
	if err != nil || got.Running || got.ExitCode != 3 {
		t.Fatalf("wait: %+v %v", got, err)
	}
	sleeper, err := vm.StartProcess(ctx, []string{"sleep", "600"}, ProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.SignalProcess(ctx, sleeper.ID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got, err := vm.WaitProcess(ctx, sleeper.ID); err != nil || got.Signal != "SIGTERM" {
		t.Fatalf("after TERM: %+v %v", got, err)
	}
	list, err := vm.Processes(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list %+v %v", list, err)
	}
	if err := vm.RemoveProcess(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitProcess(ctx, p.ID); err == nil || !strings.Contains(err.Error(), "no background process") {
		t.Fatalf("wait on a removed process: %v", err)
	}
}
