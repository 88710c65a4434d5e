package agentproto

import (
	"encoding/binary"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// YamuxConfig is the session configuration both ends use. Keepalives are off
// and the write timeout is long because a paused or snapshotted guest stops
// answering for as long as it is paused; the supervisor watches the VMM
// process instead. The window is large so that bulk output and file copies
// run at the channel's speed.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 24 * time.Hour
	c.MaxStreamWindowSize = 4 << 20
	c.StreamOpenTimeout = 0
	c.AcceptBacklog = 1024
	c.LogOutput = io.Discard
	return c
}

// yamux frame header layout (see the yamux spec): version, type, flags,
// stream id, length. A data frame's body (length bytes) follows in the
// session's next Write; a window update (which also opens, acknowledges
// and closes streams) has none.
const (
	yamuxHeaderSize       = 12
	yamuxTypeData         = 0
	yamuxTypeWindowUpdate = 1
	yamuxFlagsOpen        = 0x1 | 0x2 // SYN, ACK: a stream's opening
	// maxJoinedBody bounds the bodies joined to their header: above it
	// the copy costs more (under emulation) than the extra write saves.
	maxJoinedBody = 16 << 10
	// readFlush is how much may arrive since this side last wrote before
	// it stops holding: a peer sending that much may be waiting for the
	// window an acknowledgement grants. It counts input from before the
	// hold too, since a peer may send its whole initial window before the
	// stream is even accepted.
	readFlush = 64 << 10
)

// UpdateHold is how long JoinWrites holds a stream's opening for a data frame
// to go out with: long enough to cover a short command's run in the guest
// (10-20 ms under emulation on a busy host), whose acknowledgement then
// rides with its exit status. Nothing waits for
// a held acknowledgement but a peer with more than the initial window to
// send, which readFlush covers.
const UpdateHold = 50 * time.Millisecond

// JoinWrites wraps a yamux session's connection to make fewer, larger
// writes. On a virtio channel every write costs a device notification and
// an interrupt in the peer, which under emulation is most of what a short
// request costs. A data frame's header and small body go out in one write;
// window updates that open or acknowledge a stream (SYN, ACK) wait for the
// next data frame and go out with it, or after holdFor when none comes, or
// at once once readFlush bytes have arrived since the last write (the
// acknowledgement widens the window, and the peer may be waiting for it);
// Close drops them. So a stream's opening rides with its request and its
// acknowledgement with the reply. Other window updates (more window, a
// stream's end) go at once: a peer may be waiting for them.
//
// Only the session's send loop may call Write (yamux writes from one
// goroutine); Read may be called concurrently by its receive loop.
func JoinWrites(rwc io.ReadWriteCloser, holdFor time.Duration) *JoinWriter {
	j := &JoinWriter{rwc: rwc, holdFor: holdFor}
	j.timer = time.AfterFunc(time.Hour, j.Flush)
	j.timer.Stop()
	return j
}

// A JoinWriter is the connection JoinWrites returns.
type JoinWriter struct {
	rwc     io.ReadWriteCloser
	holdFor time.Duration
	timer   *time.Timer // flushes held window updates after holdFor

	mu    sync.Mutex
	held  []byte // frames not yet written, in order
	want  int    // >0: held ends with a data header; its body, this long, is next
	armed bool   // the timer runs
	input int    // bytes read since the last write
	err   error  // a write error of a flush outside Write, for the next Write
}

func (j *JoinWriter) Write(p []byte) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return 0, j.err
	}
	switch {
	case j.want > 0 && len(p) == j.want: // the held header's body
		j.held, j.want = append(j.held, p...), 0
	case j.want > 0: // not the body announced (yamux never does this): keep the order
		j.held, j.want = append(j.held, p...), 0
	case isHeader(p, yamuxTypeData) && dataLen(p) > 0 && dataLen(p) <= maxJoinedBody:
		j.held, j.want = append(j.held, p...), dataLen(p)
		return len(p), nil
	case opensStream(p) && j.input < readFlush:
		j.held = append(j.held, p...)
		if !j.armed {
			j.armed = true
			j.timer.Reset(j.holdFor)
		}
		return len(p), nil
	default: // a big body's header, a ping, a go-away: now, after what is held
		if len(j.held) > 0 {
			j.held = append(j.held, p...)
			break
		}
		j.input = 0
		return j.rwc.Write(p)
	}
	if err := j.flush(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush writes what is held (under mu).
func (j *JoinWriter) flush() error {
	if j.armed {
		j.armed = false
		j.timer.Stop()
	}
	if len(j.held) == 0 {
		return nil
	}
	_, err := j.rwc.Write(j.held)
	j.held, j.input = j.held[:0], 0
	if err != nil && j.err == nil {
		j.err = err
	}
	return err
}

// Flush writes held window updates now, unless a data header waits for
// its body (the send loop's next Write, coming at once, flushes them): for
// a stream opened ahead of its request.
func (j *JoinWriter) Flush() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.want == 0 {
		j.flush()
	}
}

func (j *JoinWriter) Read(p []byte) (int, error) {
	n, err := j.rwc.Read(p)
	if n > 0 {
		j.mu.Lock()
		if j.input += n; j.armed && j.input >= readFlush && j.want == 0 {
			j.flush()
		}
		j.mu.Unlock()
	}
	return n, err
}

// Close closes the connection and drops what is held: the session is
// ending, and a write to a peer that is gone could block forever. The
// connection closes first, which ends a write in progress.
func (j *JoinWriter) Close() error {
	err := j.rwc.Close()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.timer.Stop()
	j.armed, j.held, j.want = false, nil, 0
	if j.err == nil {
		j.err = io.ErrClosedPipe
	}
	return err
}

// opensStream reports whether p is a window update that opens or
// acknowledges a stream (and ends none).
func opensStream(p []byte) bool {
	if !isHeader(p, yamuxTypeWindowUpdate) {
		return false
	}
	f := binary.BigEndian.Uint16(p[2:4])
	return f != 0 && f&^yamuxFlagsOpen == 0
}

func isHeader(p []byte, typ byte) bool {
	return len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == typ
}

func dataLen(p []byte) int { return int(binary.BigEndian.Uint32(p[8:12])) }
