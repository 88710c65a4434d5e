package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// epoch is the mtime test entries get unless they say otherwise.
var epoch = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// ent is one tar entry of a test layer.
type ent struct {
	name   string
	typ    byte
	body   string
	link   string
	mode   int64
	uid    int
	gid    int
	mtime  time.Time
	xattrs map[string]string
	major  int64
	minor  int64
}

func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func file(name, body string) ent { return ent{name: name, typ: tar.TypeReg, body: body, mode: 0o644} }
func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) ent { return ent{name: name, typ: tar.TypeLink, link: target} }
func whiteout(p string) ent {
	return file(filepath.Join(filepath.Dir(p), ".wh."+filepath.Base(p)), "")
}
func opaque(d string) ent { return file(d+"/.wh..wh..opq", "") }

// tarOf writes entries as an uncompressed tar stream.
func tarOf(t testing.TB, entries ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode,
			Uid: e.uid, Gid: e.gid, ModTime: e.mtime, Size: int64(len(e.body)),
			Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX,
		}
		if hdr.ModTime.IsZero() {
			hdr.ModTime = epoch
		}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords[paxXattr+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("writing tar header %s: %v", e.name, err)
		}
		if hdr.Size > 0 {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerOf makes a gzip-compressed image layer of entries.
func layerOf(t testing.TB, entries ...ent) v1.Layer {
	t.Helper()
	b := tarOf(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// unpack applies layers in order to a fresh tree and returns its directory.
func unpack(t *testing.T, layers ...[]byte) (string, error) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	tr, err := openTree(root, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, l := range layers {
		if err := tr.applyLayer(context.Background(), bytes.NewReader(l)); err != nil {
			return root, err
		}
	}
	return root, tr.finish()
}

// requireRoot skips a test that needs root (chown, mknod, mkfs with
// owners) unless SMOLVM_VM_TESTS=1 asks for every test, then it fails.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("SMOLVM_VM_TESTS") == "1" {
		t.Fatal("this test needs root (lchown, mknod) and SMOLVM_VM_TESTS=1 is set")
	}
	t.Skip("needs root for lchown and mknod; run as root or in CI")
}

// requireTool fails when an e2fsprogs tool is missing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := findTool(name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return p
}

func lstat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// debugfs runs one read-only debugfs request against an ext4 image.
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(requireTool(t, "debugfs"), "-R", request, img)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v\n%s", request, img, err, stderr.String())
	}
	return string(out) + stderr.String()
}

// listDir names the entries of dir, for checking nothing was left behind.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
