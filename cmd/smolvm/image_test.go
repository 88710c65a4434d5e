package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/smolvm/smolvm"
)

func needMkfs(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("SMOLVM_VM_TESTS") == "1" {
				t.Fatalf("SMOLVM_VM_TESTS=1 but %s is missing: run scripts/setup", tool)
			}
			t.Skipf("builds ext4 images: %s is not installed", tool)
		}
	}
}

// smolvmCLI runs the CLI in-process with a data dir and returns stdout.
func smolvmCLI(t *testing.T, data string, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(append([]string{"--data-dir", data}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func mustCLI(t *testing.T, data string, args ...string) string {
	t.Helper()
	out, err := smolvmCLI(t, data, args...)
	if err != nil {
		t.Fatalf("smolvm %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// rootTar is a one-file root file system tarball.
func rootTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := "cli\n"
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ociImage is a one-layer image whose config has an Entrypoint and Cmd.
func ociImage(t *testing.T) v1.Image {
	t.Helper()
	data := rootTar(t)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, User: "1000", WorkingDir: "/srv", Env: []string{"A=1", "B=2"}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestImageCommands(t *testing.T) {
	needMkfs(t)
	data, tmp := t.TempDir(), t.TempDir()
	rootfs := filepath.Join(tmp, "root.tar")
	if err := os.WriteFile(rootfs, rootTar(t), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/cli/app:v2"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, ociImage(t)); err != nil {
		t.Fatal(err)
	}

	if out := mustCLI(t, data, "image", "build", "fromtar", "--from-tar", rootfs); !strings.HasPrefix(out, "fromtar ") || !strings.Contains(out, " sha256:") {
		t.Errorf("build --from-tar printed %q; want name, size, digest", out)
	}
	if out := mustCLI(t, data, "image", "pull", ref); !strings.HasPrefix(out, "cli-app-v2 ") {
		t.Errorf("pull printed %q; want the derived name cli-app-v2 first", out)
	}
	if out := mustCLI(t, data, "image", "pull", ref, "--name", "app"); !strings.HasPrefix(out, "app ") {
		t.Errorf("pull --name app printed %q", out)
	}

	var imgs []smolvm.Image
	if err := json.Unmarshal([]byte(mustCLI(t, data, "image", "ls", "--json")), &imgs); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range imgs {
		names = append(names, i.Name)
	}
	if !slices.Equal(names, []string{"app", "cli-app-v2", "fromtar"}) {
		t.Errorf("image ls --json names %v", names)
	}
	ls := mustCLI(t, data, "image", "ls")
	t.Logf("image ls:\n%s", ls)
	for _, want := range []string{"NAME", "SOURCE", "DIGEST", "SIZE", "CREATED", "oci:" + ref, "tar:" + rootfs} {
		if !strings.Contains(ls, want) {
			t.Errorf("image ls lacks %q:\n%s", want, ls)
		}
	}

	inspect := mustCLI(t, data, "image", "inspect", ref)
	t.Logf("image inspect:\n%s", inspect)
	for _, want := range []string{"Name:", "cli-app-v2", "User:", "1000", "WorkingDir:", "/srv", "Env:         A=1\n             B=2\n", `Entrypoint:  ["/bin/sh", "-c"]`, `Cmd:         ["echo hi"]`} {
		if !strings.Contains(inspect, want) {
			t.Errorf("image inspect lacks %q:\n%s", want, inspect)
		}
	}
	var one smolvm.Image
	if err := json.Unmarshal([]byte(mustCLI(t, data, "image", "inspect", "fromtar", "--json")), &one); err != nil || one.Name != "fromtar" || one.Config != nil {
		t.Errorf("image inspect --json = %+v, %v", one, err)
	}

	if out := mustCLI(t, data, "image", "prune"); out != "nothing to remove\n" {
		t.Errorf("prune with every layer in use printed %q", out)
	}
	mustCLI(t, data, "image", "rm", "app", "cli-app-v2")
	prune := mustCLI(t, data, "image", "prune")
	t.Logf("image prune:\n%s", prune)
	for _, want := range []string{"removed layer sha256:", "removed manifest sha256:", "freed "} {
		if !strings.Contains(prune, want) {
			t.Errorf("prune after rm lacks %q:\n%s", want, prune)
		}
	}
	if out := mustCLI(t, data, "image", "prune", "--json"); !strings.Contains(out, `"removed": []`) {
		t.Errorf("second prune --json = %s; want nothing removed", out)
	}
}

func TestImageCommandErrors(t *testing.T) {
	needMkfs(t)
	data, tmp := t.TempDir(), t.TempDir()
	rootfs := filepath.Join(tmp, "root.tar")
	if err := os.WriteFile(rootfs, rootTar(t), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args   []string
		errHas string
	}{
		{[]string{"image", "build", "x", "--from-dir", tmp, "--from-tar", rootfs}, "not both"},
		{[]string{"image", "inspect", "nope"}, "not found"},
		{[]string{"image", "import", rootfs}, "neither a docker save tarball"},
		{[]string{"image", "pull", "UPPER/case"}, "invalid image reference"},
		{[]string{"image", "build", "base", "--from-tar", rootfs}, "built-in"},
		{[]string{"run", "--rootfs", rootfs}, "no command to run: give one after -- (--rootfs has no Entrypoint or Cmd)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := smolvmCLI(t, data, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("error %v; want one containing %q", err, tt.errHas)
			}
		})
	}
	if out := mustCLI(t, data, "image", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("images after bad input: %s", out)
	}
}

// TestResolveRunImage checks what `smolvm run` runs: the command given,
// else the image's Entrypoint and Cmd, else an error.
func TestResolveRunImage(t *testing.T) {
	needMkfs(t)
	data, tmp := t.TempDir(), t.TempDir()
	save := filepath.Join(tmp, "app.tar")
	tag, err := name.NewTag("cli/app:saved")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(save, tag, ociImage(t)); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, data, "image", "import", save)
	mustCLI(t, data, "image", "build", "bare", "--from-dir", tmp)
	g := &globals{dataDir: data}
	tests := []struct {
		image     string
		argv      []string
		wantImage string
		want      []string
		errHas    string
	}{
		{"app", nil, "app", []string{"/bin/sh", "-c", "echo hi"}, ""},
		{"app", []string{"uname", "-a"}, "app", []string{"uname", "-a"}, ""},
		{"bare", []string{"true"}, "bare", []string{"true"}, ""},
		{"bare", nil, "", nil, "image bare has no Entrypoint or Cmd"},
	}
	for _, tt := range tests {
		cfg, argv, err := resolveRunImage(context.Background(), g, smolvm.Config{Image: tt.image}, tt.argv)
		if tt.errHas != "" {
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("%s %q: error %v, want one containing %q", tt.image, tt.argv, err, tt.errHas)
			}
			continue
		}
		if err != nil || cfg.Image != tt.wantImage || !slices.Equal(argv, tt.want) {
			t.Errorf("%s %q: image %s argv %q err %v; want %s %q", tt.image, tt.argv, cfg.Image, argv, err, tt.wantImage, tt.want)
		}
	}
}
