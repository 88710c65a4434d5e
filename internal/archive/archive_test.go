package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tarOf builds a tar stream from headers; a regular entry's body is its
// Linkname field's value when Typeflag is TypeReg (and Size is set from it).
type entry struct {
	hdr  tar.Header
	body string
}

func tarOf(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if e.body != "" {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func reg(name, body string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeReg}, body}
}
func symlink(name, target string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}, ""}
}
func hardlink(name, target string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}, ""}
}

func TestExtractRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		top     string
		setup   func(t *testing.T, dst, outside string)
	}{
		{"absolute name", []entry{reg("/abs", "x")}, "", nil},
		{"dot-dot name", []entry{reg("a/../../escape", "x")}, "", nil},
		{"dot-dot alone", []entry{reg("..", "x")}, "", nil},
		{"write through a symlink in the stream", []entry{symlink("l", "OUTSIDE"), reg("l/f", "x")}, "", nil},
		{"write through a relative symlink", []entry{symlink("l", "../.."), reg("l/f", "x")}, "", nil},
		{"hard link to a file outside", []entry{hardlink("h", "../secret")}, "", nil},
		{"hard link through a symlink", []entry{symlink("l", "OUTSIDE"), hardlink("h", "l/secret")}, "", nil},
		{"write through a symlink already on disk", []entry{reg("pre/f", "x")}, "", func(t *testing.T, dst, outside string) {
			if err := os.Symlink(outside, filepath.Join(dst, "pre")); err != nil {
				t.Fatal(err)
			}
		}},
		{"name outside Top", []entry{reg("top/a", "ok"), reg("other", "x")}, "top", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			dst, outside := filepath.Join(base, "dst"), filepath.Join(base, "outside")
			for _, d := range []string{dst, outside} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			os.WriteFile(filepath.Join(base, "secret"), []byte("s"), 0o600)
			os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600)
			if tt.setup != nil {
				tt.setup(t, dst, outside)
			}
			for i := range tt.entries {
				tt.entries[i].hdr.Linkname = strings.ReplaceAll(tt.entries[i].hdr.Linkname, "OUTSIDE", outside)
			}
			_, err := Extract(context.Background(), tarOf(t, tt.entries...), dst, ExtractOptions{Top: tt.top})
			if !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("got %v, want ErrUnsafePath", err)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Fatalf("something was written outside: %v", ents)
			}
			if _, err := os.Stat(filepath.Join(base, "escape")); err == nil {
				t.Fatal("escape was written")
			}
		})
	}
}

func TestExtractReplacesSymlinkInsteadOfFollowing(t *testing.T) {
	base := t.TempDir()
	dst, victim := filepath.Join(base, "dst"), filepath.Join(base, "victim")
	os.Mkdir(dst, 0o755)
	os.WriteFile(victim, []byte("keep"), 0o644)
	os.Symlink(victim, filepath.Join(dst, "f"))
	if _, err := Extract(context.Background(), tarOf(t, reg("f", "new")), dst, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("victim changed to %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(dst, "f")); !fi.Mode().IsRegular() {
		t.Fatalf("f is %v, want a regular file", fi.Mode())
	}
}

func TestRoundTripKeepsModesTimesAndLinks(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tree")
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	mustMkdir(t, filepath.Join(src, "sub"), 0o750)
	mustWrite(t, filepath.Join(src, "exec.sh"), "#!/bin/sh\n", 0o755)
	mustWrite(t, filepath.Join(src, "sub", "data"), strings.Repeat("d", 100000), 0o600)
	os.Symlink("sub/data", filepath.Join(src, "rel-link"))
	os.Symlink("/nonexistent/abs", filepath.Join(src, "dangling"))
	os.Link(filepath.Join(src, "exec.sh"), filepath.Join(src, "sub", "hard"))
	for _, p := range []string{"exec.sh", "sub/data", "sub", "."} {
		os.Chtimes(filepath.Join(src, p), mtime, mtime)
	}
	var buf bytes.Buffer
	wst, err := Write(context.Background(), &buf, src, "copy")
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	xst, err := Extract(context.Background(), &buf, dst, ExtractOptions{Top: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	if wst.Entries != xst.Entries || wst.Bytes != xst.Bytes || xst.Entries != 7 {
		t.Fatalf("wrote %+v, extracted %+v; want 7 entries each", wst, xst)
	}
	out := filepath.Join(dst, "copy")
	checks := []struct {
		path  string
		mode  fs.FileMode
		mtime bool
		link  string
	}{
		{".", fs.ModeDir | 0o755, true, ""},
		{"sub", fs.ModeDir | 0o750, true, ""},
		{"exec.sh", 0o755, true, ""},
		{"sub/data", 0o600, true, ""},
		{"rel-link", fs.ModeSymlink | 0o777, false, "sub/data"},
		{"dangling", fs.ModeSymlink | 0o777, false, "/nonexistent/abs"},
	}
	for _, c := range checks {
		fi, err := os.Lstat(filepath.Join(out, c.path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, fi.Mode(), c.mode)
		}
		if c.mtime && !fi.ModTime().Equal(mtime) {
			t.Errorf("%s: mtime %v, want %v", c.path, fi.ModTime(), mtime)
		}
		if c.link != "" {
			if l, _ := os.Readlink(filepath.Join(out, c.path)); l != c.link {
				t.Errorf("%s: link %q, want %q", c.path, l, c.link)
			}
		}
	}
	a, _ := os.Stat(filepath.Join(out, "exec.sh"))
	b, _ := os.Stat(filepath.Join(out, "sub", "hard"))
	if !os.SameFile(a, b) {
		t.Error("hard link was not kept")
	}
	if a.Sys().(*syscall.Stat_t).Nlink != 2 {
		t.Error("hard link count is not 2")
	}
}

func TestWriteErrorsNameThePath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone")
	_, err := Write(context.Background(), &bytes.Buffer{}, missing, "gone")
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("got %v, want not-exist naming %s", err, missing)
	}
}

func TestExtractIntoMissingDestination(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := Extract(context.Background(), tarOf(t, reg("a", "x")), missing, ExtractOptions{})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("got %v, want not-exist naming %s", err, missing)
	}
}

func TestCleanName(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"a/b/c", "a/b/c", true},
		{"./a//b/", "a/b", true},
		{"a/./b", "a/b", true},
		{"", "", false},
		{".", "", false},
		{"/etc/passwd", "", false},
		{"../x", "", false},
		{"a/../../x", "", false},
		{"a/..", "", false},
		{"a\x00b", "", false},
	}
	for _, tt := range tests {
		got, err := CleanName(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("CleanName(%q) = %q, %v; want %q ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func mustMkdir(t *testing.T, p string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

func mustWrite(t *testing.T, p, body string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}
