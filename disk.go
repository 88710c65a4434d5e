package smolvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/sparse"
	"golang.org/x/sys/unix"
)

// Root disk formats.
const (
	diskRaw   = "raw"
	diskQcow2 = "qcow2"
)

// diskBacking identifies the image file a qcow2 overlay reads through, as it
// was when the overlay was made: an image rebuilt or replaced under a VM
// would corrupt what its guest sees, so start refuses one that changed.
type diskBacking struct {
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mod_time"`
	Inode   uint64    `json:"inode"`
}

// makeIsolatedDisk gives the VM in dir its own writable root disk made from
// the image rec.Disk, and points rec at it:
//
//   - a qcow2 overlay over the image (vms/ID/rootfs.qcow2) when the VM will
//     run on QEMU and keeps the image's size: creation takes the same few
//     microseconds whatever the image's size, and the VM's writes land in
//     the overlay;
//   - otherwise a reflink or sparse copy (vms/ID/rootfs.ext4): Firecracker
//     takes raw disks only; --disk-size needs the ext4 grown on the host
//     before boot, which resize2fs can do on a raw file but not through
//     qcow2; and a retained disk must not depend on an image that may go.
func makeIsolatedDisk(ctx context.Context, dir string, rec *record) error {
	fi, err := os.Stat(rec.Disk)
	if err != nil {
		return fmt.Errorf("opening image: %w", err)
	}
	cfg := rec.Config
	grow := int64(cfg.DiskSizeMiB)<<20 > fi.Size()
	if diskWantsOverlay(cfg.Backend, os.Getenv("SMOLVM_BACKEND"), grow, cfg.RetainDisk, firecrackerLikely) {
		image, err := filepath.Abs(rec.Disk)
		if err != nil {
			return err
		}
		disk := filepath.Join(dir, "rootfs.qcow2")
		if err := writeQcow2Overlay(disk, image, fi.Size()); err != nil {
			return fmt.Errorf("creating disk overlay: %w", err)
		}
		b := backingOf(image, fi)
		rec.Disk, rec.DiskFormat, rec.DiskBacking, rec.DiskOwned = disk, diskQcow2, &b, true
		return nil
	}
	disk := filepath.Join(dir, "rootfs.ext4")
	if err := cloneDisk(ctx, rec.Disk, disk, cfg.DiskSizeMiB); err != nil {
		return err
	}
	rec.Disk, rec.DiskFormat, rec.DiskOwned = disk, diskRaw, true
	return nil
}

// diskWantsOverlay decides between a qcow2 overlay and a raw copy. backend
// is the VM's --backend, fromEnv $SMOLVM_BACKEND; with neither, the overlay
// is used unless firecracker() says Firecracker may be chosen at start.
func diskWantsOverlay(backend, fromEnv string, grow, retain bool, firecracker func() bool) bool {
	if grow || retain {
		return false
	}
	name := strings.ToLower(strings.TrimSpace(backend))
	if name == "" {
		name = strings.ToLower(strings.TrimSpace(fromEnv))
	}
	switch name {
	case "qemu":
		return true
	case "":
		return !firecracker()
	}
	return false // firecracker, or a backend that may not read qcow2
}

// firecrackerLikely says whether automatic backend selection may pick
// Firecracker here (it needs /dev/kvm and the binary); when it may, disks
// stay raw.
func firecrackerLikely() bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}
	_, err := exec.LookPath("firecracker")
	return err == nil
}

func backingOf(path string, fi os.FileInfo) diskBacking {
	b := diskBacking{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UTC()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		b.Inode = st.Ino
	}
	return b
}

// checkBacking fails when the image under a VM's overlay is gone or is not
// the file the overlay was made over.
func checkBacking(rec record) error {
	if rec.DiskBacking == nil {
		return nil
	}
	want := *rec.DiskBacking
	fi, err := os.Stat(want.Path)
	if err != nil {
		return fmt.Errorf("%w: the vm's disk is an overlay on image %s, which is gone: delete the vm and create it again", ErrState, want.Path)
	}
	if got := backingOf(want.Path, fi); got.Size != want.Size || got.Inode != want.Inode || !got.ModTime.Equal(want.ModTime) {
		return fmt.Errorf("%w: the vm's disk is an overlay on image %s, which changed since the vm was created (rebuilt?): delete the vm and create it again", ErrState, want.Path)
	}
	return nil
}

// cloneDisk makes dst a private copy of the image src: a reflink where the
// filesystem has them (instant, shares blocks), else a sparse copy. With
// sizeMiB above the image's size, the copy and its ext4 filesystem grow.
func cloneDisk(ctx context.Context, src, dst string, sizeMiB int) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening image: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("creating disk: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if err := sparseCopyFile(ctx, out, in); err != nil {
			return fmt.Errorf("copying image %s: %w", src, err)
		}
	}
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	want := int64(sizeMiB) << 20
	if want <= fi.Size() {
		return nil
	}
	if err := out.Truncate(want); err != nil {
		return fmt.Errorf("growing disk: %w", err)
	}
	msg, err := exec.CommandContext(ctx, "resize2fs", "-f", dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("growing filesystem: resize2fs: %v: %s", err, lastLine(msg))
	}
	return nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// sparseCopyFile copies all of in to out, leaving holes where in has holes
// or zero pages.
func sparseCopyFile(ctx context.Context, out, in *os.File) error {
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	return sparse.Copy(ctx, out, in, fi.Size())
}
