package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/archive"
)

// checkPath accepts an absolute path without NUL bytes and returns it clean.
func checkPath(p string) (string, error) {
	if p == "" || !filepath.IsAbs(p) || strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("path %q: must be absolute", p)
	}
	return filepath.Clean(p), nil
}

// fileInfo converts an lstat result.
func fileInfo(p string, fi fs.FileInfo) agentproto.FileInfo {
	info := agentproto.FileInfo{Name: fi.Name(), Size: fi.Size(), Mode: uint32(fi.Mode()), ModTime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.UID, info.GID = st.Uid, st.Gid
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		info.Link, _ = os.Readlink(p)
	}
	return info
}

// handleFile serves the file ops. It reports false for an op it does not know.
func (s *server) handleFile(ctx context.Context, c *agentproto.Conn, op string, req *agentproto.FileRequest) bool {
	handlers := map[string]func(context.Context, *agentproto.Conn, string, *agentproto.FileRequest) error{
		agentproto.OpStat:      s.fileStat,
		agentproto.OpListDir:   s.fileList,
		agentproto.OpRemove:    s.fileRemove,
		agentproto.OpMkdirAll:  s.fileMkdirAll,
		agentproto.OpReadFile:  s.fileRead,
		agentproto.OpWriteFile: s.fileWrite,
		agentproto.OpUpload:    s.fileUpload,
		agentproto.OpDownload:  s.fileDownload,
	}
	h, ok := handlers[op]
	if !ok {
		return false
	}
	if req == nil {
		replyError(c, errors.New(op+" request without file field"))
		return true
	}
	p, err := checkPath(req.Path)
	if err == nil {
		err = h(ctx, c, p, req)
	}
	if err != nil {
		s.log.Debug("file op failed", "op", op, "path", req.Path, "err", err)
		replyError(c, err)
	}
	return true
}

func (s *server) fileStat(_ context.Context, c *agentproto.Conn, p string, _ *agentproto.FileRequest) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	info := fileInfo(p, fi)
	return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{Stat: &info})
}

func (s *server) fileList(_ context.Context, c *agentproto.Conn, p string, _ *agentproto.FileRequest) error {
	ents, err := os.ReadDir(p)
	if err != nil {
		return err
	}
	out := make([]agentproto.FileInfo, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since it was listed
		}
		if err != nil {
			return err
		}
		out = append(out, fileInfo(filepath.Join(p, e.Name()), fi))
	}
	b, err := json.Marshal(agentproto.Response{Entries: out})
	if err != nil {
		return err
	}
	if len(b) > agentproto.MaxFrame {
		return fmt.Errorf("listing %s: %d entries are too many for one reply", p, len(out))
	}
	return c.WriteFrame(agentproto.FrameResponse, b)
}

func (s *server) fileRemove(_ context.Context, c *agentproto.Conn, p string, req *agentproto.FileRequest) error {
	var err error
	switch {
	case req.Recursive && p == "/":
		return errors.New("remove /: refusing to remove the root")
	case req.Recursive:
		if _, err = os.Lstat(p); err == nil {
			err = os.RemoveAll(p)
		}
	default:
		err = os.Remove(p)
	}
	if err != nil {
		return err
	}
	return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
}

func (s *server) fileMkdirAll(_ context.Context, c *agentproto.Conn, p string, req *agentproto.FileRequest) error {
	mode := fs.FileMode(req.Mode) & fs.ModePerm
	if mode == 0 {
		mode = 0o755
	}
	if err := os.MkdirAll(p, mode); err != nil {
		return err
	}
	return c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
}

// fileRead streams a file's bytes; a file that cannot be read to its end
// ends the stream with an error instead of FrameDone.
func (s *server) fileRead(_ context.Context, c *agentproto.Conn, p string, _ *agentproto.FileRequest) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("read %s: is a directory", p)
	}
	info := fileInfo(p, fi)
	if err := c.WriteJSON(agentproto.FrameResponse, agentproto.Response{Stat: &info}); err != nil {
		return err
	}
	n, err := io.CopyBuffer(frameWriter{c}, f, make([]byte, 256<<10))
	if err != nil {
		return fmt.Errorf("reading %s: %w", p, err)
	}
	return c.WriteJSON(agentproto.FrameDone, agentproto.Done{Bytes: n})
}

// fileWrite writes the host's bytes to a temporary file beside p and
// renames it over p, so that a reader never sees half a file and an
// existing symlink at p is replaced, not written through.
func (s *server) fileWrite(_ context.Context, c *agentproto.Conn, p string, req *agentproto.FileRequest) error {
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return fmt.Errorf("write %s: is a directory", p)
	}
	dir := filepath.Dir(p)
	if fi, err := os.Stat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("write %s: %s is not a directory", p, dir)
	}
	tmp := filepath.Join(dir, "."+filepath.Base(p)+".smolvm-"+randHex())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, errors.Unwrap(err))
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := c.WriteJSON(agentproto.FrameResponse, agentproto.Response{}); err != nil {
		return err
	}
	n, err := io.Copy(f, &frameReader{c: c})
	if err != nil {
		return fmt.Errorf("writing %s: %w", p, unwrapPath(err))
	}
	mode := fs.FileMode(req.Mode) & fs.ModePerm
	if mode == 0 {
		mode = 0o644
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", p, unwrapPath(err))
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write %s: %w", p, unwrapPath(err))
	}
	done = true
	return c.WriteJSON(agentproto.FrameDone, agentproto.Done{Bytes: n})
}

// fileUpload extracts the host's tar stream beneath the directory p.
func (s *server) fileUpload(ctx context.Context, c *agentproto.Conn, p string, _ *agentproto.FileRequest) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("upload into %s: not a directory", p)
	}
	if err := c.WriteJSON(agentproto.FrameResponse, agentproto.Response{}); err != nil {
		return err
	}
	fr := &frameReader{c: c}
	st, err := archive.Extract(ctx, fr, p, archive.ExtractOptions{})
	if err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, fr); err != nil { // the tar's padding, up to the host's end
		return err
	}
	return c.WriteJSON(agentproto.FrameDone, agentproto.Done{Bytes: st.Bytes, Entries: st.Entries})
}

// fileDownload streams p (a file, symlink or tree) as a tar.
func (s *server) fileDownload(ctx context.Context, c *agentproto.Conn, p string, req *agentproto.FileRequest) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	name := req.Name
	if name == "" {
		name = filepath.Base(p)
	}
	info := fileInfo(p, fi)
	if err := c.WriteJSON(agentproto.FrameResponse, agentproto.Response{Stat: &info}); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(frameWriter{c}, 256<<10)
	st, err := archive.Write(ctx, bw, p, name)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return err
	}
	return c.WriteJSON(agentproto.FrameDone, agentproto.Done{Bytes: st.Bytes, Entries: st.Entries})
}

// frameWriter sends each write as one FrameStdout data frame.
type frameWriter struct{ c *agentproto.Conn }

func (w frameWriter) Write(p []byte) (int, error) {
	if err := w.c.WriteFrame(agentproto.FrameStdout, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// frameReader reads the host's FrameStdin payloads until FrameStdinClose.
type frameReader struct {
	c    *agentproto.Conn
	buf  []byte
	left []byte
	eof  bool
}

func (r *frameReader) Read(p []byte) (int, error) {
	for len(r.left) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		t, b, err := r.c.ReadFrame(r.buf)
		if err != nil {
			return 0, fmt.Errorf("reading from host: %w", err)
		}
		if cap(b) > cap(r.buf) {
			r.buf = b[:0]
		}
		switch t {
		case agentproto.FrameStdin:
			r.left = b
		case agentproto.FrameStdinClose:
			r.eof = true
		}
	}
	n := copy(p, r.left)
	r.left = r.left[n:]
	return n, nil
}

func randHex() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// unwrapPath drops an *os.PathError around err (the caller names the path).
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
