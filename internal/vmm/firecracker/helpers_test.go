package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/vmm"
)

// fakeConfig shapes one fake firecracker.
type fakeConfig struct {
	faults    string // envFaults
	ignoreCAD bool
	exit      string // envExit
	opts      Options
}

// fakeBackend returns a Backend whose firecracker is this test binary
// playing the fake, and the path of the fake's record.
func fakeBackend(t *testing.T, cfg fakeConfig) (*Backend, string) {
	t.Helper()
	spec, err := findSpec()
	if err != nil {
		t.Skip(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(t.TempDir(), "record.jsonl")
	t.Setenv(envFake, "1")
	t.Setenv(envSpec, spec)
	t.Setenv(envRecord, record)
	t.Setenv(envFaults, cfg.faults)
	t.Setenv(envExit, cfg.exit)
	if cfg.ignoreCAD {
		t.Setenv(envIgnoreCAD, "1")
	} else {
		t.Setenv(envIgnoreCAD, "")
	}
	opts := cfg.opts
	opts.Binary = exe
	opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return New(opts), record
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// readRecord returns the requests the fake received (its first line, the
// process's pid and args, is returned apart).
func readRecord(t *testing.T, path string) (first recorded, reqs []recorded) {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return first, nil // the fake never started
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r recorded
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record line %q: %v", sc.Text(), err)
		}
		if r.PID != 0 {
			first = r
			continue
		}
		reqs = append(reqs, r)
	}
	return first, reqs
}

// requireNoViolations fails t for every request the fake found off-spec.
func requireNoViolations(t *testing.T, reqs []recorded) {
	t.Helper()
	for _, r := range reqs {
		if r.Violation != "" {
			t.Errorf("request off the api spec: %s", r.Violation)
		}
	}
}

// calls lists "METHOD /path" of each request.
func calls(reqs []recorded) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

// bodyOf decodes the body of the first request to method+path into v.
func bodyOf(t *testing.T, reqs []recorded, call string, v any) {
	t.Helper()
	for _, r := range reqs {
		if r.Method+" "+r.Path == call {
			if err := json.Unmarshal(r.Body, v); err != nil {
				t.Fatalf("%s body: %v", call, err)
			}
			return
		}
	}
	t.Fatalf("no %s request in %v", call, calls(reqs))
}

// shortDir is a fresh directory with a short path (unix socket paths are
// limited to 107 bytes; t.TempDir can be longer).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s for inspection", d)
			return
		}
		os.RemoveAll(d)
	})
	return d
}

// fullSpec describes a VM using every feature: initrd, a writable and a
// read-only disk, a tap with rate limits, a console log. Its files live
// beside (not in) the run directory dir.
func fullSpec(t *testing.T, dir string) vmm.Spec {
	t.Helper()
	files := t.TempDir()
	touch := func(name string) string {
		p := filepath.Join(files, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return vmm.Spec{
		ID:        "vm-test1",
		Dir:       dir,
		Kernel:    touch("vmlinux"),
		Initrd:    touch("initrd.cpio"),
		Cmdline:   "smolvm.root=/dev/vda quiet",
		VCPUs:     2,
		MemoryMiB: 256,
		Disks: []vmm.Disk{
			{Path: touch("root.ext4")},
			{Path: touch("base.ext4"), ReadOnly: true, Format: "raw"},
		},
		ConsoleLog: filepath.Join(files, "console.log"),
		Net: []vmm.NetIf{
			{Mode: "tap", Tap: "smol0", MAC: "06:00:ac:10:00:02", RxRateBps: 1 << 20, TxRateBps: 512 << 10},
		},
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// launch starts a fake-backed VM and makes sure it is gone after the test.
func launch(t *testing.T, b *Backend, spec vmm.Spec) *Instance {
	t.Helper()
	vi, err := b.Launch(testCtx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	inst := vi.(*Instance)
	t.Cleanup(func() { inst.Kill(); <-inst.Done() })
	return inst
}

// dirNames lists the entries of dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
