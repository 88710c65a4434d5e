package smolvm

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/vmtest"
)

// TestOCIImagesBoot pulls the busybox test image from a loopback registry
// and imports it from a docker save tarball, boots each, and checks that
// the layers and the image config are in force in the guest.
func TestOCIImagesBoot(t *testing.T) {
	opts := testOpts(t)
	needImageTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	img := testImage(t, runtime.GOARCH)
	suffix := strings.TrimPrefix(newID(), "vm-")
	reg.push(t, "smolvmtest/busybox:"+suffix, img)
	pulled, err := PullImage(ctx, reg.ref("smolvmtest/busybox:"+suffix), PullOptions{}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	removeImageAtEnd(t, pulled.Name, opts)
	save := filepath.Join(t.TempDir(), "busybox.tar")
	saveTarball(t, save, "smolvmtest/busybox:saved", img)
	imported, err := ImportImage(ctx, save, ImportOptions{Name: "ocitest-import-" + suffix}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	removeImageAtEnd(t, imported.Name, opts)

	uid := strconv.Itoa(testAppUID) + "\n"
	checks := []struct {
		name string
		argv []string
		opts RunOptions
		want string
	}{
		{"file deleted by a later layer is gone", Shell("test -e /etc/doomed && echo present || echo absent"), RunOptions{}, "absent\n"},
		{"file of the later layer is there", []string{"cat", "/work/hello.txt"}, RunOptions{}, "hi from layer 2\n"},
		{"owner kept", []string{"stat", "-c", "%u:%g", "/work/hello.txt"}, RunOptions{}, "1234:1234\n"},
		{"hard link kept", []string{"stat", "-c", "%h", "/bin/busybox"}, RunOptions{}, "2\n"},
		{"user from the image", []string{"id", "-u"}, RunOptions{}, uid},
		{"user given overrides the image's", []string{"id", "-u"}, RunOptions{User: "root"}, "0\n"},
		{"working dir from the image", []string{"pwd"}, RunOptions{}, "/work\n"},
		{"env from the image", Shell(`echo "$GREETING"`), RunOptions{}, "hello from oci\n"},
		{"env given overrides the image's", Shell(`echo "$GREETING"`), RunOptions{Env: map[string]string{"GREETING": "mine"}}, "mine\n"},
	}
	for _, name := range []string{pulled.Name, imported.Name} {
		t.Run(name, func(t *testing.T) {
			vm := bootTiny(t, Config{Image: name})
			for _, c := range checks {
				res, err := vm.Run(ctx, c.argv, c.opts)
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				if res.ExitCode != 0 || string(res.Stdout) != c.want {
					t.Errorf("%s: %q exited %d with stdout %q stderr %q; want %q", c.name, c.argv, res.ExitCode, res.Stdout, res.Stderr, c.want)
				}
			}
		})
	}
}

// TestRunImagePullsAndRunsCmd is `smolvm run --image REF` with REF not yet
// pulled and no command: it pulls, then runs the image's Entrypoint+Cmd.
func TestRunImagePullsAndRunsCmd(t *testing.T) {
	opts := testOpts(t)
	needImageTools(t)
	reg := newTestRegistry(t)
	suffix := strings.TrimPrefix(newID(), "vm-")
	ref := reg.ref("smolvmtest/run:" + suffix)
	reg.push(t, "smolvmtest/run:"+suffix, testImage(t, runtime.GOARCH))
	name, err := ImageNameFromRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	removeImageAtEnd(t, name, opts)
	cmd := exec.Command(vmtest.Binary(t), "--data-dir", vmtest.DataDir(t), "run", "--image", ref)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("smolvm run --image %s: %v\nstderr:\n%s", ref, err, stderr.String())
	}
	if want := "cmd as 1234 in /work: hello from oci\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	if !strings.Contains(stderr.String(), "pulling "+ref) {
		t.Errorf("stderr does not tell of the pull:\n%s", stderr.String())
	}
	if _, err := InspectImage(context.Background(), name, opts...); err != nil {
		t.Errorf("the image pulled on first use is not kept: %v", err)
	}
}

func removeImageAtEnd(t *testing.T, name string, opts []Option) {
	t.Cleanup(func() {
		if err := RemoveImage(context.Background(), name, opts...); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
}
