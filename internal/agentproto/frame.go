package agentproto

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// FrameType says what a frame's payload is.
type FrameType byte

// Frame types. Data frames carry raw bytes; the others carry JSON.
const (
	FrameStdin      FrameType = 0   // host → guest: bytes for the process's stdin
	FrameStdout     FrameType = 1   // guest → host: bytes the process wrote to stdout
	FrameStderr     FrameType = 2   // guest → host: bytes the process wrote to stderr
	FrameStdinClose FrameType = 'c' // host → guest: no more stdin (empty payload)
	FrameRequest    FrameType = 'Q' // host → guest: Request, the first frame of a stream
	FrameResponse   FrameType = 'A' // guest → host: a JSON reply to a Request
	FrameSignal     FrameType = 's' // host → guest: Signal for a running process
	FrameResize     FrameType = 'r' // host → guest: Resize for a process on a PTY
	FrameExit       FrameType = 'x' // guest → host: ExitStatus, the last frame of an exec
	FrameError      FrameType = 'e' // guest → host: Error; the request failed
)

// MaxFrame bounds a frame's payload; both sides reject larger frames.
const MaxFrame = 1 << 20

// ErrFrameTooLarge is returned when a peer announces a frame above MaxFrame.
var ErrFrameTooLarge = errors.New("agentproto: frame too large")

// Conn frames one stream. Reads must come from one goroutine; writes are
// serialised by Conn and safe for concurrent use.
type Conn struct {
	r    *bufio.Reader
	w    io.Writer
	c    io.Closer
	wmu  sync.Mutex
	wbuf []byte // header and payload of the frame being written (under wmu)
	hdr  [5]byte
}

// readBuffer is a Conn's read buffer size. It serves frame headers and
// small frames; a large payload is read past it, straight into the
// caller's buffer. Every stream has one, so it stays small: allocating
// (zeroing) it is a cost per request.
const readBuffer = 4 << 10

// NewConn wraps a stream (a yamux stream or any byte stream).
func NewConn(rwc io.ReadWriteCloser) *Conn {
	return &Conn{r: bufio.NewReaderSize(rwc, readBuffer), w: rwc, c: rwc}
}

// Close closes the underlying stream.
func (c *Conn) Close() error { return c.c.Close() }

// WriteFrame writes one frame. Payloads above MaxFrame are split into
// several frames of the same type, which only data frames may be.
func (c *Conn) WriteFrame(t FrameType, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		n := min(len(p), MaxFrame)
		var hdr [5]byte
		hdr[0] = byte(t)
		binary.BigEndian.PutUint32(hdr[1:], uint32(n))
		c.wbuf = append(append(c.wbuf[:0], hdr[:]...), p[:n]...) // one write: one yamux frame
		if _, err := c.w.Write(c.wbuf); err != nil {
			return err
		}
		p = p[n:]
		if len(p) == 0 {
			return nil
		}
	}
}

// WriteJSON writes v, encoded as JSON, as one frame of type t.
func (c *Conn) WriteJSON(t FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %c frame: %w", t, err)
	}
	return c.WriteFrame(t, b)
}

// ReadFrame reads the next frame. The payload is valid until the next call.
func (c *Conn) ReadFrame(buf []byte) (FrameType, []byte, error) {
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(c.hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(c.r, buf); err != nil {
		return 0, nil, fmt.Errorf("reading %d-byte frame: %w", n, io.ErrUnexpectedEOF)
	}
	return FrameType(c.hdr[0]), buf, nil
}

// ReadJSON reads one frame, which must be of type want (or FrameError, which
// is returned as *Error), and decodes it into v.
func (c *Conn) ReadJSON(want FrameType, v any) error {
	return c.readDecoded(want, func(p []byte) error { return json.Unmarshal(p, v) })
}

// ReadRequest reads the FrameRequest that opens a stream, as ReadJSON
// would, through DecodeRequest.
func (c *Conn) ReadRequest(r *Request) error {
	return c.readDecoded(FrameRequest, func(p []byte) error { return DecodeRequest(p, r) })
}

func (c *Conn) readDecoded(want FrameType, decode func([]byte) error) error {
	t, p, err := c.ReadFrame(nil)
	if err != nil {
		return err
	}
	switch t {
	case want:
		return decode(p)
	case FrameError:
		var e Error
		if err := json.Unmarshal(p, &e); err != nil {
			return fmt.Errorf("decoding error frame: %w", err)
		}
		return &e
	default:
		return fmt.Errorf("agentproto: got frame %q, want %q", t, want)
	}
}
