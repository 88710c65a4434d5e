package agentproto

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// recorder keeps each Write it gets as one entry.
type recorder struct {
	mu     sync.Mutex
	writes [][]byte
	wrote  chan struct{} // gets a value per write
	r      io.Reader     // what Read returns
}

func newRecorder() *recorder {
	return &recorder{wrote: make(chan struct{}, 64), r: bytes.NewReader(nil)}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, bytes.Clone(p))
	r.mu.Unlock()
	r.wrote <- struct{}{}
	return len(p), nil
}

func (r *recorder) Read(p []byte) (int, error) { return r.r.Read(p) }
func (r *recorder) Close() error               { return nil }

func (r *recorder) got() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

func header(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:], 7) // stream id
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func withFlags(h []byte, flags uint16) []byte {
	binary.BigEndian.PutUint16(h[2:], flags)
	return h
}

func TestJoinWrites(t *testing.T) {
	small := bytes.Repeat([]byte("s"), 100)
	big := bytes.Repeat([]byte("b"), maxJoinedBody+1)
	update := withFlags(header(yamuxTypeWindowUpdate, 1<<20), 0x2) // an acknowledgement
	syn := withFlags(header(yamuxTypeWindowUpdate, 0), 0x1)
	more := header(yamuxTypeWindowUpdate, 1<<20) // just more window
	ping := header(2, 1)
	fin := withFlags(header(yamuxTypeWindowUpdate, 0), 0x4)
	rst := withFlags(header(yamuxTypeWindowUpdate, 0), 0x8)
	cat := func(ps ...[]byte) []byte { return bytes.Join(ps, nil) }
	tests := []struct {
		name   string
		writes [][]byte
		want   [][]byte // what reaches the connection, write by write
	}{
		{"small data frame: header and body in one write",
			[][]byte{header(yamuxTypeData, 100), small},
			[][]byte{cat(header(yamuxTypeData, 100), small)}},
		{"big data frame: header and body apart",
			[][]byte{header(yamuxTypeData, uint32(len(big))), big},
			[][]byte{header(yamuxTypeData, uint32(len(big))), big}},
		{"acknowledgement waits for the next data frame",
			[][]byte{update, header(yamuxTypeData, 100), small},
			[][]byte{cat(update, header(yamuxTypeData, 100), small)}},
		{"opening waits for the request",
			[][]byte{syn, header(yamuxTypeData, 100), small},
			[][]byte{cat(syn, header(yamuxTypeData, 100), small)}},
		{"more window is not held and takes held updates along",
			[][]byte{update, more},
			[][]byte{cat(update, more)}},
		{"several openings and a big frame: the openings go first, in one write",
			[][]byte{update, syn, header(yamuxTypeData, uint32(len(big))), big},
			[][]byte{cat(update, syn, header(yamuxTypeData, uint32(len(big)))), big}},
		{"a ping is not held and takes held updates along",
			[][]byte{update, ping},
			[][]byte{cat(update, ping)}},
		{"a stream's end is not held and takes held updates along",
			[][]byte{update, fin},
			[][]byte{cat(update, fin)}},
		{"a reset alone goes at once",
			[][]byte{rst},
			[][]byte{rst}},
		{"a ping alone goes at once",
			[][]byte{ping},
			[][]byte{ping}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			j := JoinWrites(rec, time.Hour)
			for _, w := range tt.writes {
				if n, err := j.Write(w); n != len(w) || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v", len(w), n, err)
				}
			}
			got := rec.got()
			if len(got) != len(tt.want) {
				t.Fatalf("%d writes reached the connection, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !bytes.Equal(got[i], tt.want[i]) {
					t.Errorf("write %d: %d bytes, want %d (%q...)", i, len(got[i]), len(tt.want[i]), got[i][:min(len(got[i]), 16)])
				}
			}
		})
	}
}

// A held window update goes out on its own when no data frame comes: after
// the hold, once enough has arrived that the peer may be waiting for it,
// or when flushed.
func TestJoinWritesFlushesHeldUpdates(t *testing.T) {
	update := withFlags(header(yamuxTypeWindowUpdate, 1<<20), 0x2)
	tests := []struct {
		name  string
		hold  time.Duration
		input int // bytes the peer sends meanwhile
		then  func(j io.ReadWriteCloser)
	}{
		{"after the hold", time.Millisecond, 0, func(io.ReadWriteCloser) {}},
		{"when input piles up", time.Hour, readFlush, func(j io.ReadWriteCloser) { io.Copy(io.Discard, j) }},
		{"when flushed", time.Hour, 0, func(j io.ReadWriteCloser) { j.(*JoinWriter).Flush() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			rec.r = bytes.NewReader(make([]byte, tt.input))
			j := JoinWrites(rec, tt.hold)
			j.Write(update)
			if len(rec.got()) != 0 {
				t.Fatal("the update was written at once")
			}
			tt.then(j)
			select {
			case <-rec.wrote:
			case <-time.After(10 * time.Second):
				t.Fatal("the held update was never written")
			}
			if got := rec.got(); len(got) != 1 || !bytes.Equal(got[0], update) {
				t.Errorf("writes %q, want the update", got)
			}
		})
	}
}

// A real session pair over a pipe, both ends joining writes and holding
// for ever (so only data frames, input and the frames never held release
// what is held): requests and replies, an upload three times the stream
// window (which neither the held acknowledgement nor a held window update
// may stall) and stream closes all go through.
func TestJoinWritesYamuxSession(t *testing.T) {
	a, b := net.Pipe()
	client, err := yamux.Client(JoinWrites(a, time.Hour), YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := yamux.Server(JoinWrites(b, time.Hour), YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	upload := 3 * int(YamuxConfig().MaxStreamWindowSize)
	go func() {
		for {
			st, err := server.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				c := NewConn(st)
				var req Request
				if err := c.ReadJSON(FrameRequest, &req); err != nil {
					return
				}
				var n int
				if req.Op == "upload" {
					buf := make([]byte, MaxFrame)
					for n < upload {
						_, p, err := c.ReadFrame(buf)
						if err != nil {
							return
						}
						n += len(p)
					}
				}
				c.WriteJSON(FrameResponse, Response{PID: n})
			}()
		}
	}()
	for i, op := range []string{"ping", "upload", "ping"} {
		st, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		c := NewConn(st)
		if err := c.WriteJSON(FrameRequest, Request{Op: op}); err != nil {
			t.Fatal(err)
		}
		want := 0
		if op == "upload" {
			want = upload
			chunk := make([]byte, 64<<10)
			for sent := 0; sent < upload; sent += len(chunk) {
				if err := c.WriteFrame(FrameStdin, chunk); err != nil {
					t.Fatal(err)
				}
			}
		}
		var resp Response
		if err := c.ReadJSON(FrameResponse, &resp); err != nil || resp.PID != want {
			t.Fatalf("request %d (%s): %+v, %v; want %d", i, op, resp, err, want)
		}
		// The server's close arrives.
		if _, _, err := c.ReadFrame(nil); err != io.EOF {
			t.Errorf("request %d: after the reply got %v, want EOF", i, err)
		}
		c.Close()
	}
}

// Close closes the connection without writing what is held (a write to a
// peer that is gone could block the close forever); writes then fail.
func TestJoinWritesClose(t *testing.T) {
	a, b := net.Pipe() // nobody reads b: a write to a would block
	defer b.Close()
	j := JoinWrites(a, time.Hour)
	j.Write(withFlags(header(yamuxTypeWindowUpdate, 1), 0x2))
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Write(header(2, 1)); err == nil {
		t.Error("Write after Close succeeded")
	}
	if _, err := a.Write([]byte{0}); err == nil {
		t.Error("the connection is still open")
	}
}

// A peer that sent a whole window before the stream was even acknowledged
// may be waiting for the acknowledgement: it is not held then.
func TestJoinWritesNoHoldAfterInput(t *testing.T) {
	ack := withFlags(header(yamuxTypeWindowUpdate, 1<<20), 0x2)
	rec := newRecorder()
	rec.r = bytes.NewReader(make([]byte, readFlush))
	j := JoinWrites(rec, time.Hour)
	io.Copy(io.Discard, j)
	j.Write(ack)
	if got := rec.got(); len(got) != 1 || !bytes.Equal(got[0], ack) {
		t.Fatalf("writes %q, want the acknowledgement at once", got)
	}
	// Having written, the next one is held again.
	j.Write(ack)
	if got := rec.got(); len(got) != 1 {
		t.Fatalf("%d writes, want the second acknowledgement held", len(got))
	}
}
