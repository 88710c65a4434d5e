package smolvm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/archive"
)

// FileInfo describes a file in the guest, as lstat sees it.
type FileInfo struct {
	Name    string      `json:"name"`
	Size    int64       `json:"size"`
	Mode    fs.FileMode `json:"mode"`
	ModTime time.Time   `json:"mtime"`
	Link    string      `json:"link,omitempty"` // a symlink's target
	UID     uint32      `json:"uid"`
	GID     uint32      `json:"gid"`
}

// IsDir reports whether the file is a directory.
func (fi FileInfo) IsDir() bool { return fi.Mode.IsDir() }

func fileInfoFrom(p agentproto.FileInfo) FileInfo {
	return FileInfo{Name: p.Name, Size: p.Size, Mode: fs.FileMode(p.Mode), ModTime: p.ModTime,
		Link: p.Link, UID: p.UID, GID: p.GID}
}

// TransferStats counts what an Upload or Download moved.
type TransferStats struct {
	Entries int   // files, directories and links
	Bytes   int64 // file contents
}

func (vm *VM) fileCall(ctx context.Context, op, p string, f agentproto.FileRequest) (agentproto.Response, error) {
	f.Path = p
	resp, err := vm.agentCall(ctx, agentproto.Request{Op: op, File: &f})
	if err != nil {
		return resp, fmt.Errorf("%s %s in vm %s: %w", op, p, vm.id, err)
	}
	return resp, nil
}

// Stat describes the guest file at path (an absolute path; a symlink is
// described, not followed).
func (vm *VM) Stat(ctx context.Context, path string) (FileInfo, error) {
	resp, err := vm.fileCall(ctx, agentproto.OpStat, path, agentproto.FileRequest{})
	if err != nil {
		return FileInfo{}, err
	}
	if resp.Stat == nil {
		return FileInfo{}, fmt.Errorf("stat %s in vm %s: no answer", path, vm.id)
	}
	return fileInfoFrom(*resp.Stat), nil
}

// ListDir describes the entries of the guest directory at path, sorted
// by name.
func (vm *VM) ListDir(ctx context.Context, path string) ([]FileInfo, error) {
	resp, err := vm.fileCall(ctx, agentproto.OpListDir, path, agentproto.FileRequest{})
	if err != nil {
		return nil, err
	}
	out := make([]FileInfo, 0, len(resp.Entries))
	for _, e := range resp.Entries {
		out = append(out, fileInfoFrom(e))
	}
	return out, nil
}

// Remove removes the guest file or empty directory at path.
func (vm *VM) Remove(ctx context.Context, path string) error {
	_, err := vm.fileCall(ctx, agentproto.OpRemove, path, agentproto.FileRequest{})
	return err
}

// RemoveAll removes path and everything beneath it; a path that does not
// exist is not an error.
func (vm *VM) RemoveAll(ctx context.Context, path string) error {
	_, err := vm.fileCall(ctx, agentproto.OpRemove, path, agentproto.FileRequest{Recursive: true})
	return err
}

// MkdirAll creates the guest directory path and any missing parents with
// permissions perm (0 means 0755).
func (vm *VM) MkdirAll(ctx context.Context, path string, perm fs.FileMode) error {
	_, err := vm.fileCall(ctx, agentproto.OpMkdirAll, path, agentproto.FileRequest{Mode: uint32(perm.Perm())})
	return err
}

// ReadFile returns the contents of the guest file at path.
func (vm *VM) ReadFile(ctx context.Context, path string) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := vm.ReadFileTo(ctx, path, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ReadFileTo streams the guest file at path to w and returns the number
// of bytes copied. Memory use does not grow with the file.
func (vm *VM) ReadFileTo(ctx context.Context, path string, w io.Writer) (int64, error) {
	n, err := vm.readFileTo(ctx, path, w)
	if err != nil {
		return n, fmt.Errorf("reading %s in vm %s: %w", path, vm.id, err)
	}
	return n, nil
}

func (vm *VM) readFileTo(ctx context.Context, p string, w io.Writer) (int64, error) {
	c, done, err := vm.agentStream(ctx, agentproto.Request{Op: agentproto.OpReadFile, File: &agentproto.FileRequest{Path: p}})
	if err != nil {
		return 0, err
	}
	defer done()
	if _, err := readResponse(ctx, c); err != nil {
		return 0, err
	}
	src := newFrameSource(ctx, c)
	n, err := io.CopyBuffer(w, src, make([]byte, 256<<10))
	if err != nil {
		return n, err
	}
	d, err := src.finish()
	if err == nil && d.Bytes != n {
		err = fmt.Errorf("got %d bytes, the guest sent %d", n, d.Bytes)
	}
	return n, err
}

// WriteFile writes data to the guest file at path with permissions perm
// (0 means 0644). The file is replaced atomically: written beside path and
// renamed over it (a symlink at path is replaced, not followed).
func (vm *VM) WriteFile(ctx context.Context, path string, data []byte, perm fs.FileMode) error {
	_, err := vm.WriteFileFrom(ctx, path, bytes.NewReader(data), perm)
	return err
}

// WriteFileFrom is WriteFile streaming from r; it returns the bytes written.
func (vm *VM) WriteFileFrom(ctx context.Context, path string, r io.Reader, perm fs.FileMode) (int64, error) {
	d, err := vm.sendStream(ctx, agentproto.Request{Op: agentproto.OpWriteFile,
		File: &agentproto.FileRequest{Path: path, Mode: uint32(perm.Perm())}},
		func(w io.Writer) error {
			_, err := io.CopyBuffer(w, r, make([]byte, agentproto.MaxFrame))
			return err
		})
	if err != nil {
		return d.Bytes, fmt.Errorf("writing %s in vm %s: %w", path, vm.id, err)
	}
	return d.Bytes, nil
}

// sendStream sends req, then what produce writes as data frames, then the
// end of input, and waits for the guest's FrameDone. A guest error (a full
// disk, a bad tar entry) ends the transfer at once.
func (vm *VM) sendStream(ctx context.Context, req agentproto.Request, produce func(io.Writer) error) (agentproto.Done, error) {
	c, done, err := vm.agentStream(ctx, req)
	if err != nil {
		return agentproto.Done{}, err
	}
	defer done()
	if _, err := readResponse(ctx, c); err != nil {
		return agentproto.Done{}, err
	}
	sent := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(frameSink{c, agentproto.FrameStdin}, agentproto.MaxFrame)
		err := produce(bw)
		if err == nil {
			err = bw.Flush()
		}
		if err == nil {
			err = c.WriteFrame(agentproto.FrameStdinClose, nil)
		}
		var we *streamWriteError
		if err != nil && !errors.As(err, &we) {
			// A local failure: the guest must not wait for the rest.
			// (When the stream itself refused a write, the guest or the
			// supervisor ended it, and its reason may still be on its
			// way: closing here could throw that away unread.)
			c.Close()
		}
		sent <- err
	}()
	src := newFrameSource(ctx, c)
	d, err := src.finish()
	if err != nil {
		c.Close() // stops the sender if it is still going
		var ge *GuestError
		if serr := <-sent; serr != nil && !errors.As(err, &ge) && ctx.Err() == nil {
			return d, serr // a local failure ended the transfer
		}
		return d, err
	}
	return d, <-sent
}

// Upload copies the local file, symlink or directory tree src into the
// guest at dst, keeping modes, modification times and symlinks, like
// `docker cp`: when dst is an existing directory, src goes inside it under
// its own name; otherwise dst names the copy (its parent must exist).
// The guest checks every path it writes.
func (vm *VM) Upload(ctx context.Context, src, dst string) (TransferStats, error) {
	st, err := vm.upload(ctx, src, dst)
	if err != nil {
		return st, fmt.Errorf("uploading %s to vm %s:%s: %w", src, vm.id, dst, err)
	}
	return st, nil
}

func (vm *VM) upload(ctx context.Context, src, dst string) (TransferStats, error) {
	fi, err := os.Lstat(src)
	if err != nil {
		return TransferStats{}, err
	}
	dir, name, err := vm.uploadTarget(ctx, dst, fi.IsDir(), filepath.Base(src))
	if err != nil {
		return TransferStats{}, err
	}
	d, err := vm.sendStream(ctx, agentproto.Request{Op: agentproto.OpUpload, File: &agentproto.FileRequest{Path: dir}},
		func(w io.Writer) error {
			_, err := archive.Write(ctx, w, src, name)
			return err
		})
	return TransferStats{Entries: d.Entries, Bytes: d.Bytes}, err
}

// uploadTarget decides where an upload of something named base lands.
func (vm *VM) uploadTarget(ctx context.Context, dst string, srcIsDir bool, base string) (dir, name string, err error) {
	if !path.IsAbs(dst) {
		return "", "", fmt.Errorf("%w: guest path %q is not absolute", ErrInvalid, dst)
	}
	st, err := vm.Stat(ctx, dst)
	if err == nil && st.IsDir() {
		return path.Clean(dst), base, nil
	}
	if err == nil && srcIsDir {
		return "", "", fmt.Errorf("cannot copy a directory over the file %s", dst)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", "", err
	}
	if err != nil && strings.HasSuffix(dst, "/") {
		return "", "", fmt.Errorf("destination directory %s does not exist", dst)
	}
	clean := path.Clean(dst)
	if clean == "/" {
		return "/", base, nil
	}
	return path.Dir(clean), path.Base(clean), nil
}

// UploadTar extracts the tar stream r beneath the existing guest
// directory dir; the guest refuses entries that would land outside it.
func (vm *VM) UploadTar(ctx context.Context, r io.Reader, dir string) (TransferStats, error) {
	d, err := vm.sendStream(ctx, agentproto.Request{Op: agentproto.OpUpload, File: &agentproto.FileRequest{Path: dir}},
		func(w io.Writer) error {
			_, err := io.CopyBuffer(w, r, make([]byte, 256<<10))
			return err
		})
	if err != nil {
		return TransferStats{}, fmt.Errorf("uploading a tar stream to vm %s:%s: %w", vm.id, dir, err)
	}
	return TransferStats{Entries: d.Entries, Bytes: d.Bytes}, nil
}

// Download copies the guest file, symlink or tree at src to the local dst,
// keeping modes, modification times and symlinks, like `docker cp`: when
// dst is an existing directory the copy goes inside it under src's name;
// otherwise dst names the copy (its parent must exist). Nothing is
// written outside that copy, whatever the guest sends: every entry is
// checked and resolved beneath the destination. When the transfer fails
// a copy it created is removed again.
func (vm *VM) Download(ctx context.Context, src, dst string) (TransferStats, error) {
	st, err := vm.download(ctx, src, dst)
	if err != nil {
		return st, fmt.Errorf("downloading vm %s:%s to %s: %w", vm.id, src, dst, err)
	}
	return st, nil
}

func (vm *VM) download(ctx context.Context, src, dst string) (TransferStats, error) {
	if !path.IsAbs(src) {
		return TransferStats{}, fmt.Errorf("%w: guest path %q is not absolute", ErrInvalid, src)
	}
	dir, name := filepath.Dir(filepath.Clean(dst)), filepath.Base(filepath.Clean(dst))
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		dir, name = filepath.Clean(dst), path.Base(path.Clean(src))
	} else if err != nil && strings.HasSuffix(dst, "/") {
		return TransferStats{}, fmt.Errorf("destination directory %s does not exist", dst)
	}
	if name == "/" || name == "." {
		return TransferStats{}, fmt.Errorf("%w: cannot name a copy of %s %q", ErrInvalid, src, name)
	}
	target := filepath.Join(dir, name)
	_, statErr := os.Lstat(target)
	st, err := vm.downloadInto(ctx, src, dir, name)
	if err != nil && statErr != nil {
		os.RemoveAll(target) // the partial copy is ours: nothing was there before
	}
	return st, err
}

func (vm *VM) downloadInto(ctx context.Context, src, dir, name string) (TransferStats, error) {
	c, done, err := vm.agentStream(ctx, agentproto.Request{Op: agentproto.OpDownload,
		File: &agentproto.FileRequest{Path: src, Name: name}})
	if err != nil {
		return TransferStats{}, err
	}
	defer done()
	resp, err := readResponse(ctx, c)
	if err != nil {
		return TransferStats{}, err
	}
	if resp.Stat != nil && fs.FileMode(resp.Stat.Mode).IsDir() {
		if fi, err := os.Lstat(filepath.Join(dir, name)); err == nil && !fi.IsDir() {
			return TransferStats{}, fmt.Errorf("cannot copy a directory over the file %s", filepath.Join(dir, name))
		}
	}
	fsrc := newFrameSource(ctx, c)
	xst, err := archive.Extract(ctx, fsrc, dir, archive.ExtractOptions{Top: name})
	if err != nil {
		return TransferStats{Entries: xst.Entries, Bytes: xst.Bytes}, err
	}
	if _, err := fsrc.finish(); err != nil {
		return TransferStats{Entries: xst.Entries, Bytes: xst.Bytes}, err
	}
	return TransferStats{Entries: xst.Entries, Bytes: xst.Bytes}, nil
}

// DownloadTar writes the guest file or tree at src to w as a tar stream
// whose entries are named from src's base name.
func (vm *VM) DownloadTar(ctx context.Context, src string, w io.Writer) (TransferStats, error) {
	c, done, err := vm.agentStream(ctx, agentproto.Request{Op: agentproto.OpDownload, File: &agentproto.FileRequest{Path: src}})
	if err != nil {
		return TransferStats{}, err
	}
	defer done()
	wrap := func(err error) error { return fmt.Errorf("downloading vm %s:%s as tar: %w", vm.id, src, err) }
	if _, err := readResponse(ctx, c); err != nil {
		return TransferStats{}, wrap(err)
	}
	fsrc := newFrameSource(ctx, c)
	if _, err := io.CopyBuffer(w, fsrc, make([]byte, 256<<10)); err != nil {
		return TransferStats{}, wrap(err)
	}
	d, err := fsrc.finish()
	if err != nil {
		return TransferStats{}, wrap(err)
	}
	return TransferStats{Entries: d.Entries, Bytes: d.Bytes}, nil
}
