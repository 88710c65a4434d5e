package smolvm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestGuestErrorMatchesStandardErrors(t *testing.T) {
	tests := []struct {
		msg  string
		want error
	}{
		{"lstat /x: no such file or directory", fs.ErrNotExist},
		{"writing /mnt/f: no space left on device", syscall.ENOSPC},
		{"open /root/f: permission denied", fs.ErrPermission},
		{"open /a/b: not a directory", syscall.ENOTDIR},
		{"read /tmp: is a directory", syscall.EISDIR},
		{"remove /tmp/a: directory not empty", syscall.ENOTEMPTY},
		{"something else", nil},
	}
	for _, tt := range tests {
		err := error(newGuestError(tt.msg))
		if tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%q: not %v", tt.msg, tt.want)
		}
		if tt.want == nil && errors.Unwrap(err) != nil {
			t.Errorf("%q: unwraps to %v", tt.msg, errors.Unwrap(err))
		}
		if !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%q: message %q", tt.msg, err)
		}
	}
}

func TestSSHKeyIsMadeOnceAndAuthorizedOnce(t *testing.T) {
	h := &host{dir: t.TempDir()}
	path, pub, err := h.sshKey("")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || !strings.HasPrefix(pub, "ssh-ed25519 ") {
		t.Fatalf("key %s: %v %v %q", path, fi, err, pub)
	}
	path2, pub2, err := h.sshKey("")
	if err != nil || path2 != path || pub2 != pub {
		t.Fatalf("second call made another key: %s %q %v", path2, pub2, err)
	}
	// The public half can be derived from the private key alone.
	os.Rename(path+".pub", path+".moved")
	if derived, err := publicKeyOf(path); err != nil || !strings.HasPrefix(pub, derived) {
		t.Fatalf("derived %q %v, want a prefix of %q", derived, err, pub)
	}
	auth := filepath.Join(t.TempDir(), "authorized")
	for range 2 {
		if err := authorizeKey(auth, pub); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(auth); strings.Count(string(b), "ssh-ed25519") != 1 {
		t.Fatalf("authorized keys:\n%s", b)
	}
	if err := authorizeKey(auth, "not a key"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad key: %v", err)
	}
}
