package oci

import (
	"archive/tar"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// layerCase is a stack of layers and what the flattened tree must hold.
type layerCase struct {
	name    string
	layers  [][]ent
	present []string          // paths that must exist
	absent  []string          // paths that must not exist
	content map[string]string // regular files and their bytes
	links   map[string]string // symlinks and their targets
	same    [][2]string       // pairs of paths that must be one inode
}

func TestApplyLayers(t *testing.T) {
	cases := []layerCase{
		{
			name: "whiteout removes a lower file",
			layers: [][]ent{
				{dir("etc"), file("etc/a", "a"), file("etc/b", "b")},
				{whiteout("etc/a")},
			},
			present: []string{"etc/b"},
			absent:  []string{"etc/a", "etc/.wh.a"},
		},
		{
			name: "whiteout removes a lower directory tree",
			layers: [][]ent{
				{dir("d"), dir("d/x"), file("d/x/y", "y"), file("keep", "k")},
				{whiteout("d")},
			},
			present: []string{"keep"},
			absent:  []string{"d"},
		},
		{
			name: "opaque directory hides lower entries but keeps its own",
			layers: [][]ent{
				{dir("o"), file("o/old", "1"), dir("o/sub"), file("o/sub/deep", "2")},
				{file("o/before", "b"), dir("o"), opaque("o"), file("o/after", "a")},
			},
			present: []string{"o/before", "o/after"},
			absent:  []string{"o/old", "o/sub", "o/.wh..wh..opq"},
		},
		{
			name: "a whiteout never hides its own layer",
			layers: [][]ent{
				{file("x", "mine"), whiteout("x")},
			},
			content: map[string]string{"x": "mine"},
		},
		{
			name: "a file deleted in a later layer and recreated in the next",
			layers: [][]ent{
				{file("f", "one")},
				{whiteout("f")},
				{file("f", "three")},
			},
			content: map[string]string{"f": "three"},
		},
		{
			name: "file replaces directory, directory replaces file",
			layers: [][]ent{
				{dir("p"), file("p/q", "q"), file("r", "r")},
				{file("p", "now a file"), dir("r"), file("r/s", "s")},
			},
			content: map[string]string{"p": "now a file", "r/s": "s"},
		},
		{
			name: "hard links within and across layers",
			layers: [][]ent{
				{dir("bin"), file("bin/busybox", "bb"), hardlink("bin/sh", "bin/busybox")},
				{hardlink("bin/ls", "/bin/busybox")},
			},
			same:    [][2]string{{"bin/busybox", "bin/sh"}, {"bin/busybox", "bin/ls"}},
			content: map[string]string{"bin/ls": "bb"},
		},
		{
			name: "symlinked parent directories resolve inside the root",
			layers: [][]ent{
				{dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"), symlink("abs", "/usr")},
				{file("lib/libx.so", "x"), file("abs/lib/liby.so", "y")},
			},
			content: map[string]string{"usr/lib/libx.so": "x", "usr/lib/liby.so": "y"},
			links:   map[string]string{"lib": "usr/lib", "abs": "/usr"},
		},
		{
			name: "missing parents are created",
			layers: [][]ent{
				{file("a/b/c/d", "deep")},
			},
			content: map[string]string{"a/b/c/d": "deep"},
		},
		{
			name: "names with ./ and leading slash",
			layers: [][]ent{
				{dir("./"), dir("./etc/"), file("./etc/hostname", "h"), file("/etc/motd", "m")},
			},
			content: map[string]string{"etc/hostname": "h", "etc/motd": "m"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var layers [][]byte
			for _, l := range c.layers {
				layers = append(layers, tarOf(t, l...))
			}
			root, err := unpack(t, layers...)
			if err != nil {
				t.Fatalf("unpack: %v", err)
			}
			checkTree(t, root, c)
		})
	}
}

func checkTree(t *testing.T, root string, c layerCase) {
	t.Helper()
	at := func(p string) string { return filepath.Join(root, p) }
	for _, p := range c.present {
		if !exists(at(p)) {
			t.Errorf("%s is missing", p)
		}
	}
	for _, p := range c.absent {
		if exists(at(p)) {
			t.Errorf("%s exists, want it gone", p)
		}
	}
	for p, want := range c.content {
		got, err := os.ReadFile(at(p))
		if err != nil || string(got) != want {
			t.Errorf("%s holds %q (err %v), want %q", p, got, err, want)
		}
	}
	for p, want := range c.links {
		got, err := os.Readlink(at(p))
		if err != nil || got != want {
			t.Errorf("%s links to %q (err %v), want %q", p, got, err, want)
		}
	}
	for _, pair := range c.same {
		a, b := lstat(t, at(pair[0])), lstat(t, at(pair[1]))
		if a.Ino != b.Ino {
			t.Errorf("%s and %s are different inodes, want one hard-linked file", pair[0], pair[1])
		}
	}
}

// TestApplyLayersUnsafe feeds layers that try to write outside the root.
func TestApplyLayersUnsafe(t *testing.T) {
	cases := []struct {
		name    string
		layers  [][]ent
		wantErr error
	}{
		{"dotdot entry", [][]ent{{file("../evil", "x")}}, ErrUnsafePath},
		{"dotdot in the middle", [][]ent{{file("a/../../evil", "x")}}, ErrUnsafePath},
		{"dotdot hard link target", [][]ent{{hardlink("h", "../../etc/passwd")}}, ErrUnsafePath},
		{"dotdot whiteout", [][]ent{{file("a/x", "x")}, {file("a/.wh...", "")}}, ErrUnsafePath},
		{"a symlinked root entry", [][]ent{{symlink(".", "/tmp")}}, ErrUnsafePath},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			outside := t.TempDir()
			var layers [][]byte
			for _, l := range c.layers {
				layers = append(layers, tarOf(t, l...))
			}
			_, err := unpack(t, layers...)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("unpack error = %v, want %v", err, c.wantErr)
			}
			if got := listDir(t, outside); len(got) != 0 {
				t.Errorf("files appeared outside the root: %v", got)
			}
		})
	}
}

// TestApplyLayersSymlinkEscape checks that a symlink to an absolute path
// outside the root, planted by one layer, cannot carry a later layer's
// write out: the write lands under the root at the same path instead.
func TestApplyLayersSymlinkEscape(t *testing.T) {
	outside := t.TempDir()
	layers := [][]byte{
		tarOf(t, symlink("esc", outside), symlink("up", "../../../../../.."+outside)),
		tarOf(t, file("esc/pwned", "1"), file("up/pwned2", "2"), hardlink("esc/h", "esc/pwned")),
	}
	root, err := unpack(t, layers...)
	if err != nil {
		t.Fatalf("unpack: %v", err)
	}
	if got := listDir(t, outside); len(got) != 0 {
		t.Fatalf("files written outside the root: %v", got)
	}
	for _, p := range []string{"pwned", "pwned2", "h"} {
		if !exists(filepath.Join(root, outside, p)) {
			t.Errorf("%s not found under the root at %s", p, outside)
		}
	}
}

// TestApplyLayersMetadata checks owners, modes, times, extended attributes
// and special files.
func TestApplyLayersMetadata(t *testing.T) {
	requireRoot(t)
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	capNetBind := fileCapability(10)
	layer := tarOf(t,
		ent{name: "home", typ: tar.TypeDir, mode: 0o755},
		ent{name: "home/app", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000, mtime: old},
		ent{name: "home/app/data", typ: tar.TypeReg, body: "d", mode: 0o640, uid: 1000, gid: 1001, mtime: old,
			xattrs: map[string]string{"user.origin": "test"}},
		ent{name: "home/app/link", typ: tar.TypeSymlink, link: "data", uid: 1000, gid: 1000},
		ent{name: "bin", typ: tar.TypeDir, mode: 0o755},
		ent{name: "bin/suid", typ: tar.TypeReg, body: "s", mode: 0o4755, uid: 0, gid: 0},
		ent{name: "bin/ping", typ: tar.TypeReg, body: "p", mode: 0o755, xattrs: map[string]string{"security.capability": capNetBind}},
		ent{name: "tmp", typ: tar.TypeDir, mode: 0o1777},
		ent{name: "dev", typ: tar.TypeDir, mode: 0o755},
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		ent{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o600},
	)
	root, err := unpack(t, layer)
	if err != nil {
		t.Fatalf("unpack: %v", err)
	}
	cases := []struct {
		path     string
		mode     uint32 // full st_mode
		uid, gid uint32
		mtime    time.Time
	}{
		{"home/app", unix.S_IFDIR | 0o750, 1000, 1000, old},
		{"home/app/data", unix.S_IFREG | 0o640, 1000, 1001, old},
		{"home/app/link", unix.S_IFLNK | 0o777, 1000, 1000, epoch},
		{"bin/suid", unix.S_IFREG | 0o4755, 0, 0, epoch},
		{"tmp", unix.S_IFDIR | 0o1777, 0, 0, epoch},
		{"dev/null", unix.S_IFCHR | 0o666, 0, 0, epoch},
		{"dev/fifo", unix.S_IFIFO | 0o600, 0, 0, epoch},
	}
	for _, c := range cases {
		st := lstat(t, filepath.Join(root, c.path))
		if st.Mode != c.mode || st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("%s: mode %o owner %d:%d, want mode %o owner %d:%d", c.path, st.Mode, st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
		if got := time.Unix(st.Mtim.Unix()); !got.Equal(c.mtime) {
			t.Errorf("%s: mtime %v, want %v", c.path, got.UTC(), c.mtime)
		}
	}
	if st := lstat(t, filepath.Join(root, "dev/null")); unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null is device %d:%d, want 1:3", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	checkXattr(t, filepath.Join(root, "home/app/data"), "user.origin", "test")
	checkXattr(t, filepath.Join(root, "bin/ping"), "security.capability", capNetBind)
}

// fileCapability encodes a version 2 security.capability value granting
// (permitted and effective) the one capability bit.
func fileCapability(bit uint) string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|1) // VFS_CAP_REVISION_2 | effective
	binary.LittleEndian.PutUint32(b[4:], 1<<bit)       // permitted, low word
	return string(b)
}

func checkXattr(t *testing.T, p, name, want string) {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		t.Errorf("%s: reading xattr %s: %v", p, name, err)
		return
	}
	if got := string(buf[:n]); got != want {
		t.Errorf("%s: xattr %s = %q, want %q", p, name, got, want)
	}
}
