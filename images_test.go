package smolvm

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/smolvm/smolvm/internal/image/oci"
	"github.com/smolvm/smolvm/internal/vmtest"
)

func TestImageNameFromRef(t *testing.T) {
	long := strings.Repeat("abcdefghij", 7)
	tests := []struct {
		ref, want string
	}{
		{"python:3.12-slim", "python-3.12-slim"},
		{"python", "python"},
		{"python:latest", "python"},
		{"docker.io/library/debian:bookworm", "debian-bookworm"},
		{"ghcr.io/org/tool:v1.2", "org-tool-v1.2"},
		{"127.0.0.1:5000/smolvm/busybox:Edge_1", "smolvm-busybox-edge_1"},
		{"quay.io/org/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "org-img-0123456789ab"},
		{"example.com/" + long + ":tag", long[:54] + "-"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			got, err := ImageNameFromRef(tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasSuffix(tt.want, "-") {
				// Long names end in a hash of the reference.
				if !strings.HasPrefix(got, tt.want) || len(got) != 63 {
					t.Fatalf("got %q (%d chars), want %q + 8 hex", got, len(got), tt.want)
				}
			} else if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if !storeNameOK(got) {
				t.Fatalf("%q is not a valid image name", got)
			}
		})
	}
	for _, bad := range []string{"", "UPPER/Case", "a b", "repo:", "repo@sha256:short"} {
		if got, err := ImageNameFromRef(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ImageNameFromRef(%q) = %q, %v; want ErrInvalid", bad, got, err)
		}
	}
}

func TestImportName(t *testing.T) {
	tests := []struct {
		file, tag, want string
		ok              bool
	}{
		{"/x/busybox.tar", "", "busybox", true},
		{"py-3.12.tar", "", "py-3.12", true},
		{"My Image.oci.tar", "", "my-image", true},
		{"/x/whatever.tar", "python:3.12-slim", "python-3.12-slim", true},
		{"/x/.tar", "", "", false},
		{"/x/___.tar", "", "", false},
	}
	for _, tt := range tests {
		got, err := importName(tt.file, tt.tag)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("importName(%q, %q) = %q, %v; want %q (ok %v)", tt.file, tt.tag, got, err, tt.want, tt.ok)
		}
	}
}

func storeNameOK(s string) bool {
	return len(s) > 0 && len(s) <= 63 && sanitizeImageName(s) == s
}

// needImageTools skips a test that builds ext4 images when the tools are
// missing, unless the VM tier is on, which promises them.
func needImageTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			if vmtest.Enabled() {
				t.Fatalf("%s=1 but %s is missing: run scripts/setup", vmtest.EnvVar, tool)
			}
			t.Skipf("builds ext4 images: %s is not installed", tool)
		}
	}
}

// testRegistry is an OCI registry served in-process on loopback that
// counts blob downloads and can corrupt chosen blobs on the way out.
type testRegistry struct {
	host string

	mu       sync.Mutex
	blobGets map[string]int
	corrupt  map[string]bool
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := &testRegistry{blobGets: map[string]int{}, corrupt: map[string]bool{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			d := path.Base(req.URL.Path)
			r.mu.Lock()
			r.blobGets[d]++
			bad := r.corrupt[d]
			r.mu.Unlock()
			if bad {
				w = &flipFirstByte{ResponseWriter: w}
			}
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *testRegistry) ref(repoTag string) string { return r.host + "/" + repoTag }

func (r *testRegistry) push(t *testing.T, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(r.ref(repoTag))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
}

func (r *testRegistry) setCorrupt(d v1.Hash) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.corrupt[d.String()] = true
}

// flipFirstByte inverts the first byte of a response body.
type flipFirstByte struct {
	http.ResponseWriter
	done bool
}

func (f *flipFirstByte) Write(b []byte) (int, error) {
	if !f.done && len(b) > 0 {
		f.done = true
		b = append([]byte{b[0] ^ 0xff}, b[1:]...)
	}
	return f.ResponseWriter.Write(b)
}

// tarEntry is one member of a test layer.
type tarEntry struct {
	name     string
	typ      byte
	mode     int64
	uid      int
	body     string // file contents, or the link target
	linkname string
}

var epoch = time.Unix(1700000000, 0)

func tarBytes(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: epoch, Linkname: e.linkname}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layerOf(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	data := tarBytes(t, entries)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func tdir(name string, mode int64, uid int) tarEntry {
	return tarEntry{name: name, typ: tar.TypeDir, mode: mode, uid: uid}
}

func tfile(name, body string, mode int64, uid int) tarEntry {
	return tarEntry{name: name, typ: tar.TypeReg, mode: mode, uid: uid, body: body}
}

// testAppUID is the non-root user the test image runs as.
const testAppUID = 1234

// testImageConfig is the config of the busybox test image.
var testImageConfig = v1.Config{
	Env:        []string{"PATH=/usr/bin:/bin", "GREETING=hello from oci"},
	WorkingDir: "/work",
	User:       "app",
	Entrypoint: []string{"/bin/sh", "-c"},
	Cmd:        []string{`echo "cmd as $(id -u) in $(pwd): $GREETING"`},
}

// busyboxLayer is the base layer of the test images: the host's static
// busybox with applets as symlinks and one hard link, a passwd with a
// non-root user, the dirs the guest agent mounts on, and /etc/doomed,
// which a later layer deletes.
func busyboxLayer(t *testing.T) v1.Layer {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if vmtest.Enabled() {
			t.Fatalf("%s=1 but /bin/busybox is missing (busybox-static): %v", vmtest.EnvVar, err)
		}
		t.Skipf("the test image needs /bin/busybox (busybox-static): %v", err)
	}
	entries := []tarEntry{
		tdir("bin/", 0o755, 0), tdir("etc/", 0o755, 0), tdir("usr/", 0o755, 0), tdir("usr/bin/", 0o755, 0),
		tdir("proc/", 0o555, 0), tdir("sys/", 0o555, 0), tdir("dev/", 0o755, 0), tdir("run/", 0o755, 0),
		tdir("tmp/", 0o1777, 0), tdir("root/", 0o700, 0),
		tdir("home/", 0o755, 0), tdir("home/app/", 0o755, testAppUID), tdir("work/", 0o755, testAppUID),
		{name: "bin/busybox", typ: tar.TypeReg, mode: 0o755, body: string(bb)},
		{name: "bin/stat", typ: tar.TypeLink, mode: 0o755, linkname: "bin/busybox"},
		tfile("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n", 0o644, 0),
		tfile("etc/group", "root:x:0:\napp:x:1234:\n", 0o644, 0),
		tfile("etc/doomed", "deleted by the next layer\n", 0o644, 0),
	}
	for _, applet := range []string{"sh", "id", "pwd", "env", "cat", "ls", "test", "echo", "sleep", "uname"} {
		entries = append(entries, tarEntry{name: "bin/" + applet, typ: tar.TypeSymlink, linkname: "busybox"})
	}
	return layerOf(t, entries...)
}

// testImage stacks the busybox layer, a layer deleting /etc/doomed and
// adding /work/hello.txt, and extra layers, with testImageConfig.
func testImage(t *testing.T, arch string, extra ...v1.Layer) v1.Image {
	t.Helper()
	top := layerOf(t,
		tarEntry{name: "etc/.wh.doomed", typ: tar.TypeReg},
		tfile("work/hello.txt", "hi from layer 2\n", 0o644, testAppUID),
	)
	img, err := mutate.AppendLayers(empty.Image, append([]v1.Layer{busyboxLayer(t), top}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, testImageConfig
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t *testing.T, x interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := x.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// leftovers lists what is in dataDir beyond an empty database, the
// images' lock files, the layer cache's lock and the paths in keep.
func leftovers(t *testing.T, dataDir string, keep ...string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dataDir, p)
		base := filepath.Base(rel)
		switch {
		case rel == "." || d.IsDir() && slices.Contains([]string{"vms", "images", "layers"}, rel):
		case strings.HasPrefix(rel, "smolvm.db"), rel == filepath.Join("layers", ".lock"):
		case filepath.Dir(rel) == "images" && strings.HasPrefix(base, ".") && strings.HasSuffix(base, ".lock"):
		case slices.Contains(keep, rel):
		default:
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPullImage(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	img := testImage(t, runtime.GOARCH)
	reg.push(t, "smolvm/busybox:v1", img)
	data := t.TempDir()
	opts := []Option{WithDataDir(data)}
	got, err := PullImage(ctx, reg.ref("smolvm/busybox:v1"), PullOptions{}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	want := digestOf(t, img)
	if got.Name != "smolvm-busybox-v1" || got.Digest != want.String() || got.Source != "oci:"+reg.ref("smolvm/busybox:v1") {
		t.Errorf("pulled %s digest %s source %s; want smolvm-busybox-v1 %s oci:%s", got.Name, got.Digest, got.Source, want, reg.ref("smolvm/busybox:v1"))
	}
	c := got.Config
	if c == nil || c.User != "app" || c.WorkingDir != "/work" || !slices.Equal(c.Env, testImageConfig.Env) ||
		!slices.Equal(c.Entrypoint, testImageConfig.Entrypoint) || !slices.Equal(c.Cmd, testImageConfig.Cmd) {
		t.Errorf("image config %+v; want %+v", c, testImageConfig)
	}
	for _, n := range []string{"smolvm-busybox-v1", reg.ref("smolvm/busybox:v1")} {
		in, err := InspectImage(ctx, n, opts...)
		if err != nil || in.Digest != got.Digest || in.Path != got.Path {
			t.Errorf("InspectImage(%s) = %+v, %v", n, in, err)
		}
	}
	if _, err := InspectImage(ctx, "nope", opts...); !errors.Is(err, ErrNotFound) {
		t.Errorf("InspectImage(nope) = %v, want ErrNotFound", err)
	}
	list, err := ListImages(ctx, opts...)
	if err != nil || len(list) != 1 || list[0].Name != got.Name {
		t.Fatalf("ListImages = %+v, %v; want just %s", list, err, got.Name)
	}
	// The manifest is kept beside the layers, for prune.
	if _, err := os.Stat(oci.LayerPath(filepath.Join(data, "layers"), want)); err != nil {
		t.Errorf("manifest not kept: %v", err)
	}
	// EnsureImage finds the pulled image by its ref and does not pull again.
	before := reg.blobGetsTotal()
	again, err := EnsureImage(ctx, reg.ref("smolvm/busybox:v1"), opts...)
	if err != nil || again.Name != got.Name || reg.blobGetsTotal() != before {
		t.Errorf("EnsureImage = %s, %v, %d blob fetches; want %s with none", again.Name, err, reg.blobGetsTotal()-before, got.Name)
	}
}

func (r *testRegistry) blobGetsTotal() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, v := range r.blobGets {
		n += v
	}
	return n
}

// TestEnsureImagePullsOnFirstUse is `smolvm run --image REF` with REF
// not yet pulled.
func TestEnsureImagePullsOnFirstUse(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	reg.push(t, "lib/bb:latest", testImage(t, runtime.GOARCH))
	var progress bytes.Buffer
	opts := []Option{WithDataDir(t.TempDir()), WithProgress(&progress)}
	img, err := EnsureImage(ctx, reg.ref("lib/bb"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "lib-bb" || img.Config == nil || img.Config.User != "app" {
		t.Errorf("EnsureImage = %+v, want lib-bb with the image's config", img)
	}
	if !strings.Contains(progress.String(), "pulling "+reg.ref("lib/bb")) {
		t.Errorf("progress %q does not say it pulls", progress.String())
	}
	_, err = EnsureImage(ctx, reg.ref("lib/none:v9"), opts...)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no local image") {
		t.Errorf("EnsureImage of a missing ref = %v; want ErrNotFound saying it is no local image", err)
	}
}

func TestPruneImages(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	onlyB := layerOf(t, tfile("b.txt", "only in b\n", 0o644, 0))
	imgA, imgB := testImage(t, runtime.GOARCH), testImage(t, runtime.GOARCH, onlyB)
	reg.push(t, "p/a:1", imgA)
	reg.push(t, "p/b:1", imgB)
	data := t.TempDir()
	opts := []Option{WithDataDir(data)}
	for _, r := range []string{"p/a:1", "p/b:1"} {
		if _, err := PullImage(ctx, reg.ref(r), PullOptions{}, opts...); err != nil {
			t.Fatal(err)
		}
	}
	layers := filepath.Join(data, "layers")
	partial := filepath.Join(layers, ".partial-sha256-0000-123")
	if err := os.WriteFile(partial, []byte("killed mid-download"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := PruneImages(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if want := []PrunedFile{{Kind: "partial download", Name: filepath.Base(partial), Size: 19}}; !slices.Equal(rep.Removed, want) || rep.Bytes != 19 {
		t.Fatalf("prune with both images = %+v; want only the partial download", rep)
	}

	if err := RemoveImage(ctx, "p-b-1", opts...); err != nil {
		t.Fatal(err)
	}
	rep, err = PruneImages(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	dB, dOnlyB := digestOf(t, imgB), digestOf(t, onlyB)
	var got []string
	for _, f := range rep.Removed {
		got = append(got, f.Kind+" "+f.Name)
	}
	slices.Sort(got)
	want := []string{"layer " + dOnlyB.String(), "manifest " + dB.String()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("prune after removing b removed %v; want %v", got, want)
	}

	// a's layers survived: pulling it again fetches no blob but its config.
	before := reg.blobGetsTotal()
	if _, err := PullImage(ctx, reg.ref("p/a:1"), PullOptions{}, opts...); err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGetsTotal() - before; n > 1 {
		t.Errorf("re-pulling a fetched %d blobs; want at most its config", n)
	}

	if err := RemoveImage(ctx, "p-a-1", opts...); err != nil {
		t.Fatal(err)
	}
	if _, err := PruneImages(ctx, opts...); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, data); len(left) > 0 {
		t.Errorf("after removing every image and pruning, left: %v", left)
	}
}

func TestImageBadInput(t *testing.T) {
	needImageTools(t)
	reg := newTestRegistry(t)
	good := testImage(t, runtime.GOARCH)
	reg.push(t, "bad/good:1", good)
	reg.push(t, "bad/arm:1", testImage(t, "arm64"))
	corrupt := layerOf(t, tfile("c.txt", "corrupted on the wire\n", 0o644, 0))
	reg.push(t, "bad/corrupt:1", testImage(t, runtime.GOARCH, corrupt))
	reg.setCorrupt(digestOf(t, corrupt))

	tmp := t.TempDir()
	escape := filepath.Join(tmp, "escape.tar")
	writeFile(t, escape, tarBytes(t, []tarEntry{tdir("etc/", 0o755, 0), tfile("../evil", "x", 0o644, 0)}))
	escapeSave := filepath.Join(tmp, "escape-save.tar")
	saveTarball(t, escapeSave, "bad/escape:1", testImage(t, runtime.GOARCH, layerOf(t, tfile("etc/../../evil", "x", 0o644, 0))))
	notTar := filepath.Join(tmp, "not.tar")
	writeFile(t, notTar, []byte("this is not a tarball"))
	plainTar := filepath.Join(tmp, "rootfs.tar")
	writeFile(t, plainTar, tarBytes(t, []tarEntry{tdir("etc/", 0o755, 0)}))

	tests := []struct {
		name   string
		add    func(ctx context.Context, opts []Option) error
		is     error
		errHas string
		cached bool // verified layers fetched before the failure may stay in the cache, until prune
	}{
		{"unknown tag", pull(reg.ref("bad/good:nope"), ""), ErrNotFound, "not found", false},
		{"unknown repository", pull(reg.ref("bad/none:1"), ""), ErrNotFound, "not found", false},
		{"wrong platform", pull(reg.ref("bad/arm:1"), ""), ErrInvalid, "no image for platform", false},
		{"layer failing its digest", pull(reg.ref("bad/corrupt:1"), ""), nil, "digest mismatch", true},
		{"bad reference", pull("UPPER/x:1", ""), ErrInvalid, "image reference", false},
		{"bad name", pull(reg.ref("bad/good:1"), "Bad Name"), ErrInvalid, "invalid name", false},
		{"built-in name", pull(reg.ref("bad/good:1"), "tiny"), ErrInvalid, "built-in", false},
		{"rootfs tar with ../", func(ctx context.Context, o []Option) error {
			_, err := ImageFromTar(ctx, "escape", escape, o...)
			return err
		}, ErrInvalid, "unsafe path", false},
		{"docker save with ../ in a layer", func(ctx context.Context, o []Option) error {
			_, err := ImportImage(ctx, escapeSave, ImportOptions{}, o...)
			return err
		}, ErrInvalid, "unsafe path", false},
		{"import of a non-tarball", func(ctx context.Context, o []Option) error {
			_, err := ImportImage(ctx, notTar, ImportOptions{}, o...)
			return err
		}, ErrInvalid, "unrecognised format", false},
		{"import of a plain rootfs tar", func(ctx context.Context, o []Option) error {
			_, err := ImportImage(ctx, plainTar, ImportOptions{}, o...)
			return err
		}, ErrInvalid, "docker save", false},
		{"import of a missing file", func(ctx context.Context, o []Option) error {
			_, err := ImportImage(ctx, filepath.Join(tmp, "missing.tar"), ImportOptions{}, o...)
			return err
		}, nil, "no such file", false},
		{"from a missing dir", func(ctx context.Context, o []Option) error {
			_, err := ImageFromDir(ctx, "d", filepath.Join(tmp, "missing"), o...)
			return err
		}, nil, "no such file", false},
		{"from a file as dir", func(ctx context.Context, o []Option) error {
			_, err := ImageFromDir(ctx, "d", notTar, o...)
			return err
		}, nil, "not a directory", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := t.TempDir()
			opts := []Option{WithDataDir(data)}
			err := tt.add(context.Background(), opts)
			if err == nil || tt.is != nil && !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("error %v; want one matching %v containing %q", err, tt.is, tt.errHas)
			}
			t.Logf("error: %v", err)
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if imgs, err := ListImages(context.Background(), opts...); err != nil || len(imgs) > 0 {
				t.Errorf("image ls after the error: %+v, %v", imgs, err)
			}
			left := leftovers(t, data)
			if tt.cached {
				left = slices.DeleteFunc(left, func(p string) bool { return strings.HasPrefix(p, filepath.Join("layers", "sha256-")) })
			}
			if len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
			if _, err := PruneImages(context.Background(), opts...); err != nil {
				t.Fatal(err)
			}
			if left := leftovers(t, data); len(left) > 0 {
				t.Errorf("left behind after prune: %v", left)
			}
		})
	}
}

func pull(ref, name string) func(context.Context, []Option) error {
	return func(ctx context.Context, o []Option) error {
		_, err := PullImage(ctx, ref, PullOptions{Name: name}, o...)
		return err
	}
}

// TestFailedPullKeepsImage checks that a failed pull under an existing
// name leaves that image as it was.
func TestFailedPullKeepsImage(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	reg.push(t, "k/good:1", testImage(t, runtime.GOARCH))
	opts := []Option{WithDataDir(t.TempDir())}
	img, err := PullImage(ctx, reg.ref("k/good:1"), PullOptions{Name: "keep"}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := PullImage(ctx, reg.ref("k/good:2"), PullOptions{Name: "keep"}, opts...); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pull of a missing tag = %v, want ErrNotFound", err)
	}
	after, err := InspectImage(ctx, "keep", opts...)
	if err != nil || after.Digest != img.Digest || after.Created != img.Created {
		t.Errorf("image after a failed pull: %+v, %v; want %+v", after, err, img)
	}
}

func TestImportAndBuildFromTarAndDir(t *testing.T) {
	needImageTools(t)
	ctx := context.Background()
	tmp := t.TempDir()
	img := testImage(t, runtime.GOARCH)
	save := filepath.Join(tmp, "busybox.tar")
	saveTarball(t, save, "smolvm/busybox:saved", img)
	rootfs := filepath.Join(tmp, "rootfs.tar")
	writeFile(t, rootfs, tarBytes(t, []tarEntry{tdir("etc/", 0o755, 0), tfile("etc/hostname", "fromtar\n", 0o644, 0)}))
	rootDir := filepath.Join(tmp, "rootdir")
	writeFile(t, filepath.Join(rootDir, "etc", "hostname"), []byte("fromdir\n"))

	data := t.TempDir()
	opts := []Option{WithDataDir(data)}
	tests := []struct {
		name, source string
		add          func() (Image, error)
		config       bool
	}{
		{"busybox", "docker-archive:" + save, func() (Image, error) { return ImportImage(ctx, save, ImportOptions{}, opts...) }, true},
		{"smolvm-busybox-saved", "docker-archive:" + save, func() (Image, error) {
			return ImportImage(ctx, save, ImportOptions{Tag: "smolvm/busybox:saved"}, opts...)
		}, true},
		{"fromtar", "tar:" + rootfs, func() (Image, error) { return ImageFromTar(ctx, "fromtar", rootfs, opts...) }, false},
		{"fromdir", "dir:" + rootDir, func() (Image, error) { return ImageFromDir(ctx, "fromdir", rootDir, opts...) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.add()
			if err != nil {
				t.Fatal(err)
			}
			if got.Name != tt.name || got.Source != tt.source || got.Size == 0 || (got.Config != nil) != tt.config {
				t.Errorf("got %s source %s size %d config %+v; want %s %s, config %v", got.Name, got.Source, got.Size, got.Config, tt.name, tt.source, tt.config)
			}
			if tt.config && got.Digest != digestOf(t, img).String() {
				t.Errorf("digest %s, want the image's %s", got.Digest, digestOf(t, img))
			}
		})
	}
	imgs, err := ListImages(ctx, opts...)
	if err != nil || len(imgs) != len(tests) {
		t.Errorf("ListImages = %d images, %v; want %d", len(imgs), err, len(tests))
	}
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// saveTarball writes img as `docker save` would, tagged tag.
func saveTarball(t *testing.T, p, tag string, img v1.Image) {
	t.Helper()
	tg, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(p, tg, img); err != nil {
		t.Fatal(err)
	}
}

// TestPruneWaitsForPulls checks that prune does not run while a pull holds
// the layer cache (it would delete layers the pull is about to use).
func TestPruneWaitsForPulls(t *testing.T) {
	ctx := context.Background()
	h, err := openHost(ctx, []Option{WithDataDir(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	c := h.layerCache()
	unlock, err := c.lock(ctx, shared)
	if err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(c.dir, ".partial-sha256-1-1")
	writeFile(t, partial, []byte("a pull under way"))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := h.prune(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("prune while a pull holds the cache = %v, want it to wait until its context ends", err)
	}
	if _, err := os.Stat(partial); err != nil {
		t.Fatalf("prune removed a running pull's download: %v", err)
	}
	// A second pull shares the lock.
	unlock2, err := c.lock(cctx, shared)
	if err != nil {
		t.Fatalf("a second pull could not share the cache: %v", err)
	}
	unlock2()
	unlock()
	rep, err := h.prune(ctx)
	if err != nil || len(rep.Removed) != 1 || rep.Removed[0].Kind != "partial download" {
		t.Fatalf("prune after the pull = %+v, %v; want the partial download removed", rep, err)
	}
}

// TestEnsureImageLocalNames checks that built-in and local names are used
// as they are, with no pull.
func TestEnsureImageLocalNames(t *testing.T) {
	needImageTools(t)
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("the tiny image needs /bin/busybox (busybox-static)")
	}
	ctx := context.Background()
	opts := []Option{WithDataDir(t.TempDir())}
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "etc", "hostname"), []byte("x\n"))
	if _, err := ImageFromDir(ctx, "mine", root, opts...); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ ref, name, source string }{
		{"tiny", "tiny", "builtin:tiny"},
		{"mine", "mine", "dir:" + root},
	}
	for _, tt := range tests {
		img, err := EnsureImage(ctx, tt.ref, opts...)
		if err != nil || img.Name != tt.name || img.Source != tt.source {
			t.Errorf("EnsureImage(%s) = %s %s, %v; want %s %s", tt.ref, img.Name, img.Source, err, tt.name, tt.source)
		}
	}
}
