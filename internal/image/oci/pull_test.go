package oci

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/smolvm/smolvm/internal/image"
)

// baseLayer is a small distribution: users, a tool with a hard link, a
// merged-/usr style symlink, a cache dir and a file a later layer deletes.
func baseLayer(t *testing.T) v1.Layer {
	return layerOf(t,
		dir("etc"),
		file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
		file("etc/group", "root:x:0:\napp:x:1000:\n"),
		file("etc/removed", "gone in layer 2"),
		dir("usr"), dir("usr/bin"),
		ent{name: "usr/bin/tool", typ: tar.TypeReg, body: "#!/bin/sh\necho tool\n", mode: 0o755},
		hardlink("usr/bin/tool2", "usr/bin/tool"),
		symlink("bin", "usr/bin"),
		dir("var"), dir("var/cache"), dir("var/cache/apt"), file("var/cache/apt/old.bin", "old"),
		dir("home"),
	)
}

// appLayer deletes, hides and adds on top of baseLayer.
func appLayer(t *testing.T) v1.Layer {
	return layerOf(t,
		whiteout("etc/removed"),
		dir("var/cache/apt"), opaque("var/cache/apt"), file("var/cache/apt/new.bin", "new"),
		ent{name: "home/app", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		ent{name: "home/app/owned", typ: tar.TypeReg, body: "secret", mode: 0o600, uid: 1000, gid: 1000,
			xattrs: map[string]string{"user.note": "kept"}},
		symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
	)
}

var appConfig = v1.Config{
	Env:        []string{"PATH=/usr/bin:/bin", "APP_MODE=test"},
	WorkingDir: "/home/app",
	User:       "app",
	Entrypoint: []string{"/usr/bin/tool"},
	Cmd:        []string{"--serve"},
}

// testBuilder returns a builder with its layer cache and image dir in a
// temporary directory.
func testBuilder(t *testing.T) (b *Builder, imageDir string) {
	t.Helper()
	root := t.TempDir()
	imageDir = filepath.Join(root, "images")
	if err := os.Mkdir(imageDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &Builder{LayerDir: filepath.Join(root, "layers"), Keychain: authn.NewMultiKeychain(), HeadroomMiB: 8}, imageDir
}

func TestPull(t *testing.T) {
	requireRoot(t)
	reg := newRegistry(t)
	img := testImage(t, "amd64", appConfig, baseLayer(t), appLayer(t))
	reg.push(t, "app:1", img)
	b, imageDir := testBuilder(t)
	b.Platform = "linux/amd64"
	dst := filepath.Join(imageDir, "app.ext4")

	got, err := b.Pull(context.Background(), reg.ref("app:1"), dst)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	wantDigest, _ := img.Digest()
	if got.Digest != wantDigest.String() || got.Path != dst || got.Source != "oci:"+reg.ref("app:1") {
		t.Errorf("Pull returned digest %s path %s source %s, want %s %s %s", got.Digest, got.Path, got.Source, wantDigest, dst, "oci:"+reg.ref("app:1"))
	}
	if st, err := os.Stat(dst); err != nil || st.Size() != got.Size {
		t.Errorf("image file: %v, size %d, want size %d", err, st.Size(), got.Size)
	}
	wantCfg := &image.Config{Env: appConfig.Env, WorkingDir: "/home/app", User: "app", Entrypoint: appConfig.Entrypoint, Cmd: appConfig.Cmd}
	if got.Config == nil || !slices.Equal(got.Config.Env, wantCfg.Env) || got.Config.WorkingDir != wantCfg.WorkingDir ||
		got.Config.User != wantCfg.User || !slices.Equal(got.Config.Entrypoint, wantCfg.Entrypoint) || !slices.Equal(got.Config.Cmd, wantCfg.Cmd) {
		t.Errorf("config %+v, want %+v", got.Config, wantCfg)
	}
	checkAppExt4(t, dst)
	if left := listDir(t, imageDir); !slices.Equal(left, []string{"app.ext4"}) {
		t.Errorf("image dir holds %v, want only app.ext4", left)
	}
	if n := len(listDir(t, b.LayerDir)); n != 2 {
		t.Errorf("layer cache holds %d files, want 2", n)
	}
}

// checkAppExt4 reads the image built from baseLayer+appLayer with debugfs.
func checkAppExt4(t *testing.T, img string) {
	t.Helper()
	cases := []struct {
		path string
		want []string // regexps the stat output must match
	}{
		{"/", []string{`Type: directory\s+Mode:\s+0755`, `User:\s+0\s+Group:\s+0`}},
		{"/home/app", []string{`Type: directory\s+Mode:\s+0750`, `User:\s+1000\s+Group:\s+1000`}},
		{"/home/app/owned", []string{`Type: regular\s+Mode:\s+0600`, `User:\s+1000\s+Group:\s+1000`, `Size: 6\b`, `user.note \(4\) = "kept"`}},
		{"/usr/bin/tool", []string{`Type: regular\s+Mode:\s+0755`, `Links: 2`}},
		{"/bin", []string{`Type: symlink`, `Fast link dest: "usr/bin"`}},
		{"/etc/localtime", []string{`Type: symlink`, `Fast link dest: "/usr/share/zoneinfo/UTC"`}},
		{"/var/cache/apt/new.bin", []string{`Type: regular`}},
		{"/etc/removed", []string{`File not found`}},
		{"/var/cache/apt/old.bin", []string{`File not found`}},
		{"/etc/.wh.removed", []string{`File not found`}},
		{"/var/cache/apt/.wh..wh..opq", []string{`File not found`}},
	}
	for _, c := range cases {
		out := debugfs(t, img, "stat "+c.path)
		for _, re := range c.want {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("debugfs stat %s: no match for %q in:\n%s", c.path, re, out)
			}
		}
	}
	inode := regexp.MustCompile(`Inode: (\d+)`)
	a := inode.FindStringSubmatch(debugfs(t, img, "stat /usr/bin/tool"))
	b := inode.FindStringSubmatch(debugfs(t, img, "stat /usr/bin/tool2"))
	if a == nil || b == nil || a[1] != b[1] {
		t.Errorf("tool and tool2 are inodes %v and %v, want one hard-linked inode", a, b)
	}
	if out := debugfs(t, img, "cat /etc/passwd"); !strings.Contains(out, "app:x:1000:1000") {
		t.Errorf("/etc/passwd in the image: %q", out)
	}
	if out, err := exec.Command(requireTool(t, "e2fsck"), "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
}

// TestPullSharesLayers pulls two images sharing a base layer and checks the
// registry served the base layer's blob once.
func TestPullSharesLayers(t *testing.T) {
	requireRoot(t)
	reg := newRegistry(t)
	base := baseLayer(t)
	extra := layerOf(t, file("opt/extra", "x"))
	reg.push(t, "app:1", testImage(t, "amd64", appConfig, base, appLayer(t)))
	reg.push(t, "other:1", testImage(t, "amd64", v1.Config{}, base, extra))
	b, imageDir := testBuilder(t)
	b.Platform = "linux/amd64"
	ctx := context.Background()
	if _, err := b.Pull(ctx, reg.ref("app:1"), filepath.Join(imageDir, "a.ext4")); err != nil {
		t.Fatalf("first pull: %v", err)
	}
	if _, err := b.Pull(ctx, reg.ref("other:1"), filepath.Join(imageDir, "b.ext4")); err != nil {
		t.Fatalf("second pull: %v", err)
	}
	if n := reg.gets(layerDigest(t, base)); n != 1 {
		t.Errorf("base layer fetched %d times, want 1", n)
	}
	if n := reg.gets(layerDigest(t, extra)); n != 1 {
		t.Errorf("new layer fetched %d times, want 1", n)
	}
	if n := len(listDir(t, b.LayerDir)); n != 3 {
		t.Errorf("layer cache holds %d files, want 3", n)
	}
	if out := debugfs(t, filepath.Join(imageDir, "b.ext4"), "cat /opt/extra"); !strings.HasPrefix(out, "x") {
		t.Errorf("/opt/extra in the second image: %q", out)
	}
}

// TestPullBadInput checks each failure is a one-line error of the right
// kind and leaves nothing behind: no image, no staging dir, no partial layer.
func TestPullBadInput(t *testing.T) {
	reg := newRegistry(t)
	base := baseLayer(t)
	reg.push(t, "app:1", testImage(t, "amd64", appConfig, base, appLayer(t)))
	reg.push(t, "arm:1", testImage(t, "arm64", appConfig, base))
	armOnly := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add:        testImage(t, "arm64", appConfig, base),
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}},
	})
	reg.pushIndex(t, "multi:1", armOnly)
	bad := layerOf(t, file("corrupt/me", "x"))
	reg.push(t, "corrupt:1", testImage(t, "amd64", appConfig, base, bad))
	reg.setCorrupt(layerDigest(t, bad))
	reg.push(t, "escape:1", testImage(t, "amd64", appConfig, layerOf(t, file("../../escape", "x"))))

	cases := []struct {
		name    string
		ref     string
		wantErr error
	}{
		{"unknown tag", "app:nope", image.ErrNotFound},
		{"unknown repository", "nothing:1", image.ErrNotFound},
		{"single manifest for another platform", "arm:1", ErrPlatform},
		{"index without the platform", "multi:1", ErrPlatform},
		{"layer failing its digest", "corrupt:1", ErrDigest},
		{"layer with a ../ path", "escape:1", ErrUnsafePath},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, imageDir := testBuilder(t)
			b.Platform = "linux/amd64"
			_, err := b.Pull(context.Background(), reg.ref(c.ref), filepath.Join(imageDir, "x.ext4"))
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("Pull error = %v, want %v", err, c.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			t.Logf("error: %v", err)
			if left := listDir(t, imageDir); len(left) != 0 {
				t.Errorf("left in the image dir: %v", left)
			}
			for _, n := range listDir(t, b.LayerDir) {
				if !strings.HasPrefix(n, "sha256-") {
					t.Errorf("left in the layer cache: %s", n)
				}
			}
			if c.wantErr == ErrDigest && exists(LayerPath(b.LayerDir, layerDigest(t, bad))) {
				t.Errorf("the corrupt layer is in the cache")
			}
		})
	}
}

// TestPullCancelled cancels a pull while a layer is being fetched.
func TestPullCancelled(t *testing.T) {
	reg := newRegistry(t)
	base, app := baseLayer(t), appLayer(t)
	reg.push(t, "app:1", testImage(t, "amd64", appConfig, base, app))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	appDigest := layerDigest(t, app).String()
	reg.onBlob = func(d string) {
		if d == appDigest {
			cancel()
		}
	}
	b, imageDir := testBuilder(t)
	b.Platform = "linux/amd64"
	_, err := b.Pull(ctx, reg.ref("app:1"), filepath.Join(imageDir, "x.ext4"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Pull error = %v, want context.Canceled", err)
	}
	if left := listDir(t, imageDir); len(left) != 0 {
		t.Errorf("left in the image dir: %v", left)
	}
	for _, n := range listDir(t, b.LayerDir) {
		if n != "sha256-"+layerDigest(t, base).Hex {
			t.Errorf("left in the layer cache: %s", n)
		}
	}
}

// TestPullProgressLines checks the plain progress lines written when the
// progress writer is not a terminal, and that cached layers are not counted.
func TestPullProgressLines(t *testing.T) {
	reg := newRegistry(t)
	base, app := baseLayer(t), appLayer(t)
	reg.push(t, "app:1", testImage(t, "amd64", appConfig, base, app))
	var out strings.Builder
	b, imageDir := testBuilder(t)
	b.Platform, b.Progress = "linux/amd64", &out
	if _, err := b.Pull(context.Background(), reg.ref("app:1"), filepath.Join(imageDir, "x.ext4")); err != nil {
		t.Fatalf("Pull: %v", err)
	}
	size := func(l v1.Layer) int64 {
		n, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	want := []string{
		"pulling " + reg.ref("app:1") + ": " + humanBytes(size(base)+size(app)) + " to fetch",
		"fetching layer " + short(layerDigest(t, base)) + " (" + humanBytes(size(base)) + ")",
		"fetched layer " + short(layerDigest(t, base)),
		"fetching layer " + short(layerDigest(t, app)) + " (" + humanBytes(size(app)) + ")",
		"fetched layer " + short(layerDigest(t, app)),
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); !slices.Equal(got, want) {
		t.Errorf("progress lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	out.Reset()
	if _, err := b.Pull(context.Background(), reg.ref("app:1"), filepath.Join(imageDir, "y.ext4")); err != nil {
		t.Fatalf("second Pull: %v", err)
	}
	if out.Len() != 0 {
		t.Errorf("a pull with every layer cached printed %q, want nothing", out.String())
	}
}

// TestPullRootless builds as a caller without root would (as root it is
// forced): owners and device nodes reach the image through debugfs.
func TestPullRootless(t *testing.T) {
	reg := newRegistry(t)
	devs := layerOf(t, dir("dev"),
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		ent{name: "dev/gone", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0, gid: 6},
		ent{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0, gid: 6},
		hardlink("home/app/owned-link", "home/app/owned"))
	later := layerOf(t, whiteout("dev/gone"), file("home/app/owned", "replaced by root"))
	reg.push(t, "app:1", testImage(t, "amd64", appConfig, baseLayer(t), appLayer(t), devs, later))
	b, imageDir := testBuilder(t)
	b.Platform, b.rootless = "linux/amd64", true
	dst := filepath.Join(imageDir, "app.ext4")
	if _, err := b.Pull(context.Background(), reg.ref("app:1"), dst); err != nil {
		t.Fatalf("Pull: %v", err)
	}
	cases := []struct {
		path string
		want []string
	}{
		{"/", []string{`User:\s+0\s+Group:\s+0`}},
		{"/home/app", []string{`Mode:\s+0750`, `User:\s+1000\s+Group:\s+1000`}},
		{"/home/app/owned", []string{`Mode:\s+0644`, `User:\s+0\s+Group:\s+0`}},
		{"/home/app/owned-link", []string{`Mode:\s+0600`, `User:\s+1000\s+Group:\s+1000`}},
		{"/dev/null", []string{`Type: character special\s+Mode:\s+0666`, `Device major/minor number: 01:03`}},
		{"/dev/sda", []string{`Type: block special\s+Mode:\s+0660`, `User:\s+0\s+Group:\s+6`, `Device major/minor number: 08:00`}},
		{"/dev/gone", []string{`File not found`}},
	}
	for _, c := range cases {
		out := debugfs(t, dst, "stat "+c.path)
		for _, re := range c.want {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("debugfs stat %s: no match for %q in:\n%s", c.path, re, out)
			}
		}
	}
	if out, err := exec.Command(requireTool(t, "e2fsck"), "-fn", dst).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	if left := listDir(t, imageDir); !slices.Equal(left, []string{"app.ext4"}) {
		t.Errorf("image dir holds %v, want only app.ext4", left)
	}
}

// TestPullByDigest pulls repo@sha256:... and checks the digest pins the image.
func TestPullByDigest(t *testing.T) {
	reg := newRegistry(t)
	img := testImage(t, "amd64", appConfig, baseLayer(t))
	reg.push(t, "app:1", img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	b, imageDir := testBuilder(t)
	b.Platform = "linux/amd64"
	ref := reg.ref("app@" + d.String())
	got, err := b.Pull(context.Background(), ref, filepath.Join(imageDir, "x.ext4"))
	if err != nil {
		t.Fatalf("Pull %s: %v", ref, err)
	}
	if got.Digest != d.String() || got.Source != "oci:"+ref {
		t.Errorf("Pull returned digest %s source %s, want %s oci:%s", got.Digest, got.Source, d, ref)
	}
	other := reg.ref("app@sha256:" + strings.Repeat("0", 64))
	if _, err := b.Pull(context.Background(), other, filepath.Join(imageDir, "y.ext4")); !errors.Is(err, image.ErrNotFound) {
		t.Errorf("Pull of an unknown digest = %v, want ErrNotFound", err)
	}
}
