package smolvm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// BenchDisk compares creating a VM from a large rootfs with copying that
// rootfs: isolated disks are overlays (or reflinks), so create should not
// grow with the image while cp does.
type BenchDisk struct {
	ImageBytes int64      `json:"image_bytes"`
	DiskFormat string     `json:"disk_format"` // what create made: qcow2 or raw
	CreateMs   BenchStats `json:"create_ms"`   // New with Rootfs: the image, Delete not counted
	CopyMs     BenchStats `json:"copy_ms"`     // cp IMAGE COPY (the file is in the page cache)
	Ratio      float64    `json:"ratio"`       // create p50 / cp p50
}

// diskCompare writes a DiskGiB file of random data (so no copy can skip
// holes or zeros) and times, alternately, creating a VM from it and cp of
// it. The file need not be a valid ext4: no VM boots from it.
func (b *bencher) diskCompare(ctx context.Context) (*BenchDisk, error) {
	dir, err := os.MkdirTemp(b.h.dir, "bench-disk-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	image := filepath.Join(dir, "rootfs.img")
	size := int64(b.opts.DiskGiB) << 30
	b.progress("disk: writing a %d GiB rootfs of random data", b.opts.DiskGiB)
	if err := benchRandomFile(ctx, image, size); err != nil {
		return nil, err
	}
	d := &BenchDisk{ImageBytes: size}
	var create, cp []float64
	for i := range b.opts.VMs {
		id := fmt.Sprintf("bench-%s-disk%d", b.tag, i)
		start := time.Now()
		vm, err := New(ctx, Config{Name: id, Rootfs: image, Kernel: b.opts.Kernel}, b.opt...)
		if err != nil {
			return nil, err
		}
		create = append(create, benchMs(time.Since(start)))
		if info, err := vm.Info(ctx); err == nil && filepath.Ext(info.Disk) == ".qcow2" {
			d.DiskFormat = diskQcow2
		} else {
			d.DiskFormat = diskRaw
		}
		err = vm.Delete(ctx)
		vm.Close()
		if err != nil {
			return nil, err
		}
		dst := filepath.Join(dir, "copy.img")
		start = time.Now()
		if out, err := exec.CommandContext(ctx, "cp", image, dst).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("cp: %v: %s", err, benchTail(out, 200))
		}
		cp = append(cp, benchMs(time.Since(start)))
		os.Remove(dst)
		b.progress("disk %d/%d: create %.1f ms, cp %.0f ms", i+1, b.opts.VMs, create[i], cp[i])
	}
	d.CreateMs, d.CopyMs = benchSummarise(create), benchSummarise(cp)
	d.Ratio = d.CreateMs.P50 / d.CopyMs.P50
	return d, nil
}

// benchRandomFile writes size bytes of pseudo-random data to path.
func benchRandomFile(ctx context.Context, path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{'s', 'm', 'o', 'l', 'v', 'm'})
	buf := make([]byte, 4<<20)
	for written := int64(0); written < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		rng.Read(buf)
		n, err := f.Write(buf[:min(int64(len(buf)), size-written)])
		if err != nil {
			return err
		}
		written += int64(n)
	}
	return f.Close()
}
