package oci

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/smolvm/smolvm/internal/image"
)

// makeExt4 writes an ext4 image of the tree at src to dst with image.MakeExt4
// (mkfs.ext4 -d, sized to the content plus headroomMiB) and returns its size.
// On error dst does not exist.
func makeExt4(ctx context.Context, log *slog.Logger, src, dst string, headroomMiB int) (int64, error) {
	log.Debug("making ext4", "src", src, "dst", dst, "headroom_mib", headroomMiB)
	if err := image.MakeExt4(ctx, src, dst, headroomMiB); err != nil {
		return 0, flatError{err}
	}
	st, err := os.Stat(dst)
	if err != nil {
		os.Remove(dst)
		return 0, err
	}
	return st.Size(), nil
}

// findTool looks a system tool up in PATH and then in the sbin directories
// a non-root PATH often lacks.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (install e2fsprogs): %w", name, exec.ErrNotFound)
}

// oneLine folds a tool's output into one line for an error message.
func oneLine(s string) string {
	fields := strings.FieldsFunc(strings.TrimSpace(s), func(r rune) bool { return r == '\n' || r == '\r' })
	for i, f := range fields {
		fields[i] = strings.TrimSpace(f)
	}
	return strings.Join(fields, "; ")
}

// flatError shows an error on one line (tool output can span several)
// and keeps it unwrappable.
type flatError struct{ err error }

func (e flatError) Error() string { return oneLine(e.err.Error()) }
func (e flatError) Unwrap() error { return e.err }
