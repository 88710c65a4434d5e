package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
)

// QMPError is an error reply from QEMU's monitor, as
// {"error": {"class": ..., "desc": ...}}.
type QMPError struct {
	Class string // e.g. "GenericError", "CommandNotFound", "DeviceNotFound"
	Desc  string // QEMU's human-readable description
}

func (e *QMPError) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// Event is an asynchronous QMP event (SHUTDOWN, STOP, RESUME, ...).
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data,omitempty"`
	// Timestamp is the time QEMU stamped the event with.
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// ErrQMPClosed is returned for commands pending or issued after the monitor
// connection ended (QEMU exited, or Close was called).
var ErrQMPClosed = errors.New("qmp connection closed")

// eventBuffer is how many events wait unread before further ones are dropped.
const eventBuffer = 64

// qmpClient is a QMP connection in command mode. Execute is safe for
// concurrent use; replies are matched to commands by id.
type qmpClient struct {
	conn    net.Conn
	version string // QEMU version from the greeting, "7.2.22"
	events  chan Event

	writeMu sync.Mutex // serialises writes of whole command lines

	mu      sync.Mutex // guards the fields below
	nextID  uint64
	pending map[string]chan qmpReply
	readErr error // set once the reader has stopped
	done    chan struct{}
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID    json.RawMessage `json:"id"`
	Event string          `json:"event"`
}

type qmpGreeting struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major, Minor, Micro int
			} `json:"qemu"`
		} `json:"version"`
	} `json:"QMP"`
}

// dialQMP takes over conn: it reads the greeting, negotiates capabilities
// and starts the reader. ctx bounds the handshake only. On error conn is
// closed.
func dialQMP(ctx context.Context, conn net.Conn) (*qmpClient, error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	br := bufio.NewReader(conn)
	line, err := br.ReadBytes('\n')
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("reading qmp greeting: %w", ctx.Err())
		}
		return nil, fmt.Errorf("reading qmp greeting: %w", err)
	}
	var g qmpGreeting
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("reading qmp greeting: unexpected %q", trimLine(line))
	}
	v := g.QMP.Version.QEMU
	c := &qmpClient{
		conn:    conn,
		version: fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro),
		events:  make(chan Event, eventBuffer),
		pending: map[string]chan qmpReply{},
		done:    make(chan struct{}),
	}
	go c.read(br)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("negotiating qmp capabilities: %w", err)
	}
	return c, nil
}

// Events delivers asynchronous events in order. It is closed when the
// connection ends. Events are dropped when nobody reads and the buffer is full.
func (c *qmpClient) Events() <-chan Event { return c.events }

// Close ends the connection; pending commands fail with ErrQMPClosed.
func (c *qmpClient) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Execute runs cmd with args (nil for none, else marshalled to a JSON object)
// and decodes the "return" value into out (nil to discard). An error reply
// is a *QMPError.
func (c *qmpClient) Execute(ctx context.Context, cmd string, args, out any) error {
	id, ch, err := c.register()
	if err != nil {
		return err
	}
	defer c.unregister(id)
	msg := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding qmp command %s: %w", cmd, err)
	}
	if err := c.write(append(b, '\n')); err != nil {
		return fmt.Errorf("sending qmp command %s: %w", cmd, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp command %s: %w", cmd, c.closedErr())
		}
		return decodeReply(cmd, r, out)
	case <-ctx.Done():
		return fmt.Errorf("qmp command %s: %w", cmd, ctx.Err())
	}
}

func decodeReply(cmd string, r qmpReply, out any) error {
	if r.Error != nil {
		return &QMPError{Class: r.Error.Class, Desc: r.Error.Desc}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("decoding reply to qmp command %s: %w", cmd, err)
	}
	return nil
}

func (c *qmpClient) register() (string, chan qmpReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr != nil {
		return "", nil, c.readErr
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	ch := make(chan qmpReply, 1)
	c.pending[id] = ch
	return id, ch, nil
}

func (c *qmpClient) unregister(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *qmpClient) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

func (c *qmpClient) write(b []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	_, err := c.conn.Write(b)
	return err
}

// read dispatches replies and events until the connection ends, then fails
// every pending command and closes the event channel.
func (c *qmpClient) read(br *bufio.Reader) {
	defer close(c.done)
	defer close(c.events)
	var err error
	for {
		var line []byte
		line, err = br.ReadBytes('\n')
		if err != nil {
			break
		}
		c.dispatch(line)
	}
	c.mu.Lock()
	c.readErr = fmt.Errorf("%w: %v", ErrQMPClosed, err)
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

func (c *qmpClient) dispatch(line []byte) {
	var r qmpReply
	if err := json.Unmarshal(line, &r); err != nil {
		return // not JSON: nothing a command waits for
	}
	if r.Event != "" {
		var ev Event
		if json.Unmarshal(line, &ev) == nil {
			select {
			case c.events <- ev:
			default:
			}
		}
		return
	}
	var id string
	if json.Unmarshal(r.ID, &id) != nil {
		return // a reply without our string id is not ours
	}
	c.mu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

func trimLine(b []byte) string {
	const max = 120
	if len(b) > max {
		b = b[:max]
	}
	return string(b)
}
