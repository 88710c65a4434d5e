package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/image"
)

// FromDir writes an ext4 image of the directory dir (taken as the root file
// system, owners, modes and links as they are) to dst. The digest is a
// sha256 over every entry's path, type, mode, owner, size and mtime, cheap
// to compute and changed by any edit.
func (b *Builder) FromDir(ctx context.Context, dir, dst string) (image.Image, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return image.Image{}, fmt.Errorf("building from %s: %w", dir, err)
	}
	info, err := os.Stat(abs)
	if err != nil {
		return image.Image{}, fmt.Errorf("building from %s: %w", dir, err)
	}
	if !info.IsDir() {
		return image.Image{}, fmt.Errorf("building from %s: not a directory", dir)
	}
	digest, err := treeDigest(abs)
	if err != nil {
		return image.Image{}, fmt.Errorf("building from %s: %w", dir, err)
	}
	size, err := makeExt4(ctx, b.logger(), abs, dst, b.headroomMiB())
	if err != nil {
		return image.Image{}, fmt.Errorf("building from %s: %w", dir, err)
	}
	return image.Image{Path: dst, Size: size, Digest: digest, Source: "dir:" + abs, Created: time.Now().UTC()}, nil
}

// FromTar writes an ext4 image of the root file system in the tar file
// (plain, gzip or zstd) at tarPath to dst. Entries are unpacked with the
// same rules as image layers; any ".." path is refused. The digest is the
// sha256 of the file's bytes.
func (b *Builder) FromTar(ctx context.Context, tarPath, dst string) (image.Image, error) {
	abs, err := filepath.Abs(tarPath)
	if err != nil {
		return image.Image{}, fmt.Errorf("building from %s: %w", tarPath, err)
	}
	f, err := os.Open(abs)
	if err != nil {
		return image.Image{}, fmt.Errorf("building from %s: %w", tarPath, err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := b.stage(ctx, dst, func(ctx context.Context, t *tree) error {
		return applyStream(ctx, t, io.TeeReader(f, h))
	})
	if err != nil {
		return image.Image{}, fmt.Errorf("building from %s: %w", tarPath, err)
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	return image.Image{Path: dst, Size: size, Digest: digest, Source: "tar:" + abs, Created: time.Now().UTC()}, nil
}

// applyStream unpacks a possibly compressed tar stream and then reads r to
// its end, so that a hash teed from it covers every byte.
func applyStream(ctx context.Context, t *tree, r io.Reader) error {
	zr, err := decompress(r)
	if err != nil {
		return err
	}
	defer zr.Close()
	if err := t.applyLayer(ctx, zr); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return fmt.Errorf("reading tar: %w", err)
	}
	_, err = io.Copy(io.Discard, r)
	return err
}

// treeDigest hashes the shape of a directory tree (not file contents).
func treeDigest(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var uid, gid uint32
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			uid, gid = st.Uid, st.Gid
		}
		fmt.Fprintf(h, "%q %o %d:%d %d %d\n", rel, uint32(info.Mode()), uid, gid, info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
