package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The greeting QEMU 7.2 sends, verbatim.
const greeting72 = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// fakeQMP is a QMP peer on a unix socket speaking QEMU's message shapes.
// handle gets each command after qmp_capabilities and writes what it wants.
type fakeQMP struct {
	t        *testing.T
	greeting string
	handle   func(w *qmpPeer, cmd qmpCommand)
}

type qmpCommand struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// qmpPeer writes lines to the client.
type qmpPeer struct {
	mu   sync.Mutex
	conn net.Conn
}

func (p *qmpPeer) send(v any) {
	b, _ := json.Marshal(v)
	p.raw(string(b))
}

func (p *qmpPeer) raw(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conn.Write([]byte(line + "\r\n")) // QEMU ends lines with CRLF
}

func (p *qmpPeer) reply(cmd qmpCommand, ret any) {
	p.send(map[string]any{"return": ret, "id": cmd.ID})
}

func (p *qmpPeer) event(name string, data any) {
	p.send(map[string]any{"event": name, "data": data,
		"timestamp": map[string]int64{"seconds": 1796029846, "microseconds": 957206}})
}

// start serves one connection and returns a client connected to it.
func (f *fakeQMP) start(ctx context.Context) (*qmpClient, error) {
	dir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "q.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { l.Close() })
	go f.serve(l)
	conn, err := net.Dial("unix", path)
	if err != nil {
		f.t.Fatal(err)
	}
	return dialQMP(ctx, conn)
}

func (f *fakeQMP) serve(l net.Listener) {
	conn, err := l.Accept()
	if err != nil {
		return
	}
	defer conn.Close()
	p := &qmpPeer{conn: conn}
	g := f.greeting
	if g == "" {
		g = greeting72
	}
	p.raw(g)
	sc := bufio.NewScanner(conn)
	negotiated := false
	for sc.Scan() {
		var cmd qmpCommand
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			p.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "JSON parse error"}})
			continue
		}
		if !negotiated {
			if cmd.Execute != "qmp_capabilities" {
				p.send(map[string]any{"error": map[string]string{"class": "CommandNotFound",
					"desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": cmd.ID})
				continue
			}
			negotiated = true
			p.reply(cmd, struct{}{})
			continue
		}
		go f.handle(p, cmd)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQMPExecuteDecodesReturn(t *testing.T) {
	f := &fakeQMP{t: t, handle: func(p *qmpPeer, cmd qmpCommand) {
		if cmd.Execute == "query-status" {
			p.reply(cmd, map[string]any{"status": "paused", "singlestep": false, "running": false})
		}
	}}
	ctx := testCtx(t)
	c, err := f.start(ctx)
	if err != nil {
		t.Fatalf("dialQMP: %v", err)
	}
	defer c.Close()
	if c.version != "7.2.22" {
		t.Errorf("version = %q, want 7.2.22", c.version)
	}
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatalf("query-status: %v", err)
	}
	if st.Status != "paused" || st.Running {
		t.Errorf("status = %+v, want paused, not running", st)
	}
}

func TestQMPErrorReplyIsTyped(t *testing.T) {
	f := &fakeQMP{t: t, handle: func(p *qmpPeer, cmd qmpCommand) {
		var a struct {
			Device string `json:"device"`
		}
		json.Unmarshal(cmd.Arguments, &a)
		p.send(map[string]any{"id": cmd.ID, "error": map[string]string{
			"class": "DeviceNotFound", "desc": "Device '" + a.Device + "' not found"}})
	}}
	ctx := testCtx(t)
	c, err := f.start(ctx)
	if err != nil {
		t.Fatalf("dialQMP: %v", err)
	}
	defer c.Close()
	err = c.Execute(ctx, "device_del", map[string]string{"id": "x", "device": "nic9"}, nil)
	var qe *QMPError
	if !errors.As(err, &qe) {
		t.Fatalf("Execute = %v, want a *QMPError", err)
	}
	if qe.Class != "DeviceNotFound" || qe.Desc != "Device 'nic9' not found" {
		t.Errorf("QMPError = %+v", qe)
	}
}

func TestQMPEventsAndRepliesInterleave(t *testing.T) {
	// QEMU sends SHUTDOWN before its reply to quit; STOP before stop's reply.
	f := &fakeQMP{t: t, handle: func(p *qmpPeer, cmd qmpCommand) {
		switch cmd.Execute {
		case "stop":
			p.event("STOP", nil)
			p.reply(cmd, struct{}{})
		case "quit":
			p.event("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
			p.reply(cmd, struct{}{})
		}
	}}
	ctx := testCtx(t)
	c, err := f.start(ctx)
	if err != nil {
		t.Fatalf("dialQMP: %v", err)
	}
	defer c.Close()
	for _, cmd := range []string{"stop", "quit"} {
		if err := c.Execute(ctx, cmd, nil, nil); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	var got []Event
	for len(got) < 2 {
		select {
		case ev := <-c.Events():
			got = append(got, ev)
		case <-ctx.Done():
			t.Fatalf("got %d events, want 2", len(got))
		}
	}
	if got[0].Name != "STOP" || got[1].Name != "SHUTDOWN" {
		t.Fatalf("events = %s, %s; want STOP, SHUTDOWN", got[0].Name, got[1].Name)
	}
	var data struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(got[1].Data, &data); err != nil || data.Reason != "host-qmp-quit" {
		t.Errorf("SHUTDOWN data = %s (%v)", got[1].Data, err)
	}
	if got[1].Timestamp.Seconds != 1796029846 {
		t.Errorf("timestamp = %+v", got[1].Timestamp)
	}
}

func TestQMPConcurrentRepliesMatchByID(t *testing.T) {
	// Replies arrive in reverse order of the commands: the first command's
	// reply waits until the second has been answered.
	second := make(chan struct{})
	f := &fakeQMP{t: t, handle: func(p *qmpPeer, cmd qmpCommand) {
		switch cmd.Execute {
		case "first":
			<-second
			p.reply(cmd, "one")
		case "second":
			p.reply(cmd, "two")
			close(second)
		}
	}}
	ctx := testCtx(t)
	c, err := f.start(ctx)
	if err != nil {
		t.Fatalf("dialQMP: %v", err)
	}
	defer c.Close()
	var first string
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(ctx, "first", nil, &first) }()
	var got string
	if err := c.Execute(ctx, "second", nil, &got); err != nil || got != "two" {
		t.Fatalf("second = %q, %v; want two", got, err)
	}
	if err := <-errc; err != nil || first != "one" {
		t.Fatalf("first = %q, %v; want one", first, err)
	}
}

func TestQMPConnectionLossFailsPending(t *testing.T) {
	f := &fakeQMP{t: t, handle: func(p *qmpPeer, cmd qmpCommand) {
		p.conn.Close() // QEMU died mid-command
	}}
	ctx := testCtx(t)
	c, err := f.start(ctx)
	if err != nil {
		t.Fatalf("dialQMP: %v", err)
	}
	defer c.Close()
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrQMPClosed) {
		t.Fatalf("Execute = %v, want ErrQMPClosed", err)
	}
	if _, open := <-c.Events(); open {
		t.Error("Events still open after the connection ended")
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrQMPClosed) {
		t.Fatalf("Execute after loss = %v, want ErrQMPClosed", err)
	}
}

func TestQMPContextEndsWait(t *testing.T) {
	f := &fakeQMP{t: t, handle: func(p *qmpPeer, cmd qmpCommand) {}} // never answers
	c, err := f.start(testCtx(t))
	if err != nil {
		t.Fatalf("dialQMP: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute = %v, want context.Canceled", err)
	}
}

func TestQMPBadGreeting(t *testing.T) {
	f := &fakeQMP{t: t, greeting: `{"hello": "not qmp"}`, handle: func(*qmpPeer, qmpCommand) {}}
	if _, err := f.start(testCtx(t)); err == nil {
		t.Fatal("dialQMP accepted a greeting without a QMP object")
	}
}
