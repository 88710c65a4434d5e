package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/smolvm/smolvm/internal/image"
)

// dockerSave writes images as a `docker save` tarball.
func dockerSave(t *testing.T, p string, images map[string]v1.Image) {
	t.Helper()
	refs := map[name.Reference]v1.Image{}
	for tag, img := range images {
		ref, err := name.NewTag(tag)
		if err != nil {
			t.Fatal(err)
		}
		refs[ref] = img
	}
	if err := tarball.MultiRefWriteToFile(p, refs); err != nil {
		t.Fatalf("writing docker tarball: %v", err)
	}
}

// ociArchive writes img, annotated with ref name tag, as an OCI layout tarball.
func ociArchive(t *testing.T, p string, img v1.Image, tag string) {
	t.Helper()
	dir := t.TempDir()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: tag})); err != nil {
		t.Fatal(err)
	}
	tarDir(t, dir, p)
}

// tarDir writes the files under dir as a tar file at p.
func tarDir(t *testing.T, dir, p string) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			src, err := os.Open(path)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestImport(t *testing.T) {
	requireRoot(t)
	app := testImage(t, "amd64", appConfig, baseLayer(t), appLayer(t))
	other := testImage(t, "amd64", v1.Config{}, baseLayer(t))
	src := t.TempDir()
	single := filepath.Join(src, "single.tar")
	dockerSave(t, single, map[string]v1.Image{"example.test/app:1": app})
	multi := filepath.Join(src, "multi.tar")
	dockerSave(t, multi, map[string]v1.Image{"example.test/app:1": app, "example.test/other:1": other})
	oci := filepath.Join(src, "oci.tar")
	ociArchive(t, oci, app, "v1")
	digest, _ := app.Digest()

	cases := []struct {
		name, path, tag, source string
	}{
		{"docker save, one image", single, "", "docker-archive:" + single},
		{"docker save, image picked by tag", multi, "example.test/app:1", "docker-archive:" + multi},
		{"OCI layout", oci, "", "oci-archive:" + oci},
		{"OCI layout, image picked by ref name", oci, "v1", "oci-archive:" + oci},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, imageDir := testBuilder(t)
			b.Platform = "linux/amd64"
			dst := filepath.Join(imageDir, "app.ext4")
			got, err := b.Import(context.Background(), c.path, c.tag, dst)
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			if got.Digest != digest.String() || got.Source != c.source || got.Config == nil || got.Config.User != "app" {
				t.Errorf("Import returned digest %s source %s config %+v; want %s %s user app", got.Digest, got.Source, got.Config, digest, c.source)
			}
			checkAppExt4(t, dst)
			if left := listDir(t, imageDir); !slices.Equal(left, []string{"app.ext4"}) {
				t.Errorf("image dir holds %v, want only app.ext4", left)
			}
		})
	}
}

func TestImportBadInput(t *testing.T) {
	app := testImage(t, "amd64", appConfig, baseLayer(t))
	src := t.TempDir()
	multi := filepath.Join(src, "multi.tar")
	dockerSave(t, multi, map[string]v1.Image{"example.test/a:1": app, "example.test/b:1": testImage(t, "amd64", v1.Config{}, baseLayer(t))})
	escape := filepath.Join(src, "escape.tar")
	dockerSave(t, escape, map[string]v1.Image{"example.test/e:1": testImage(t, "amd64", appConfig, layerOf(t, file("a/../../x", "x")))})
	arm := filepath.Join(src, "arm.tar")
	dockerSave(t, arm, map[string]v1.Image{"example.test/arm:1": testImage(t, "arm64", appConfig, baseLayer(t))})
	ociWrongTag := filepath.Join(src, "oci.tar")
	ociArchive(t, ociWrongTag, app, "v1")
	rootfs := filepath.Join(src, "rootfs.tar")
	if err := os.WriteFile(rootfs, tarOf(t, dir("etc"), file("etc/hostname", "h")), 0o644); err != nil {
		t.Fatal(err)
	}
	notTar := filepath.Join(src, "not.tar")
	if err := os.WriteFile(notTar, bytes.Repeat([]byte("not a tar file "), 100), 0o644); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, path, tag string
		wantErr         error
	}{
		{"a root file system tarball", rootfs, "", ErrFormat},
		{"not a tarball", notTar, "", ErrFormat},
		{"missing file", filepath.Join(src, "missing.tar"), "", fs.ErrNotExist},
		{"a layer with ../", escape, "", ErrUnsafePath},
		{"wrong platform", arm, "", ErrPlatform},
		{"unknown ref name in an OCI layout", ociWrongTag, "v2", image.ErrNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, imageDir := testBuilder(t)
			b.Platform = "linux/amd64"
			_, err := b.Import(context.Background(), c.path, c.tag, filepath.Join(imageDir, "x.ext4"))
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("Import error = %v, want %v", err, c.wantErr)
			}
			t.Logf("error: %v", err)
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if left := listDir(t, imageDir); len(left) != 0 {
				t.Errorf("left in the image dir: %v", left)
			}
		})
	}
	t.Run("several images and no tag", func(t *testing.T) {
		b, imageDir := testBuilder(t)
		_, err := b.Import(context.Background(), multi, "", filepath.Join(imageDir, "x.ext4"))
		if !errors.Is(err, ErrAmbiguous) {
			t.Fatalf("Import of a two-image tarball without a tag = %v, want ErrAmbiguous", err)
		}
		t.Logf("error: %v", err)
		if left := listDir(t, imageDir); len(left) != 0 {
			t.Errorf("left in the image dir: %v", left)
		}
	})
}

func TestFromTar(t *testing.T) {
	requireRoot(t)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarOf(t, dir("./"), dir("etc"), file("etc/hostname", "box"),
		ent{name: "home/u/f", typ: tar.TypeReg, body: "f", mode: 0o600, uid: 1234, gid: 1234},
		hardlink("etc/hn", "etc/hostname")))
	zw.Close()
	src := filepath.Join(t.TempDir(), "rootfs.tar.gz")
	if err := os.WriteFile(src, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	b, imageDir := testBuilder(t)
	dst := filepath.Join(imageDir, "r.ext4")
	got, err := b.FromTar(context.Background(), src, dst)
	if err != nil {
		t.Fatalf("FromTar: %v", err)
	}
	if got.Source != "tar:"+src || !strings.HasPrefix(got.Digest, "sha256:") || got.Config != nil {
		t.Errorf("FromTar returned source %s digest %s config %v", got.Source, got.Digest, got.Config)
	}
	out := debugfs(t, dst, "stat /home/u/f")
	if !strings.Contains(out, "User:  1234   Group:  1234") {
		t.Errorf("stat /home/u/f:\n%s", out)
	}
	if out := debugfs(t, dst, "stat /etc/hostname"); !strings.Contains(out, "Links: 2") {
		t.Errorf("stat /etc/hostname:\n%s", out)
	}

	bad := filepath.Join(t.TempDir(), "bad.tar")
	if err := os.WriteFile(bad, tarOf(t, file("ok", "1"), file("../evil", "x")), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = b.FromTar(context.Background(), bad, filepath.Join(imageDir, "bad.ext4"))
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("FromTar of a tar with ../ = %v, want ErrUnsafePath", err)
	}
	if left := listDir(t, imageDir); !slices.Equal(left, []string{"r.ext4"}) {
		t.Errorf("image dir holds %v, want only r.ext4", left)
	}
}

func TestFromDir(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc/hostname"), []byte("box"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(src, "etc/hostname"), 42, 43); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(src, "hn")); err != nil {
		t.Fatal(err)
	}
	b, imageDir := testBuilder(t)
	dst := filepath.Join(imageDir, "d.ext4")
	got, err := b.FromDir(context.Background(), src, dst)
	if err != nil {
		t.Fatalf("FromDir: %v", err)
	}
	if got.Source != "dir:"+src || !strings.HasPrefix(got.Digest, "sha256:") {
		t.Errorf("FromDir returned source %s digest %s", got.Source, got.Digest)
	}
	if out := debugfs(t, dst, "stat /etc/hostname"); !strings.Contains(out, "User:    42   Group:    43") || !strings.Contains(out, "Mode:  0640") {
		t.Errorf("stat /etc/hostname:\n%s", out)
	}
	if out := debugfs(t, dst, "stat /hn"); !strings.Contains(out, `Fast link dest: "/etc/hostname"`) {
		t.Errorf("stat /hn:\n%s", out)
	}
	again, err := b.FromDir(context.Background(), src, filepath.Join(imageDir, "d2.ext4"))
	if err != nil || again.Digest != got.Digest {
		t.Errorf("second FromDir of the same tree: digest %s err %v, want %s", again.Digest, err, got.Digest)
	}

	for _, bad := range []string{filepath.Join(src, "missing"), filepath.Join(src, "etc/hostname")} {
		if _, err := b.FromDir(context.Background(), bad, filepath.Join(imageDir, "bad.ext4")); err == nil {
			t.Errorf("FromDir(%s) succeeded", bad)
		}
	}
	if left := listDir(t, imageDir); !slices.Equal(left, []string{"d.ext4", "d2.ext4"}) {
		t.Errorf("image dir holds %v", left)
	}
}
