package firecracker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// handshakeTimeout bounds the CONNECT exchange when ctx has no deadline.
const handshakeTimeout = 10 * time.Second

// DialVsock connects to guest vsock port through firecracker's hybrid vsock
// unix socket at path: it sends "CONNECT <port>\n" and expects
// "OK <host port>\n". The returned conn keeps any bytes the guest sent
// right after the reply. ctx bounds the dial and the handshake.
func DialVsock(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connecting to vsock socket %s: %w (has the vm started?)", path, err)
		}
		return nil, fmt.Errorf("connecting to vsock socket %s: %w", path, err)
	}
	br, err := handshake(ctx, c, port)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &bufConn{Conn: c, r: br}, nil
}

func handshake(ctx context.Context, c net.Conn, port uint32) (*bufio.Reader, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(handshakeTimeout)
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return nil, fmt.Errorf("vsock CONNECT %d: %w", port, ctxErr(ctx, err))
	}
	br := bufio.NewReaderSize(c, 4096)
	line, err := readLine(br, 64)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("vsock CONNECT %d: connection closed without a reply (is the agent running in the guest and listening on port %d?)", port, port)
		}
		return nil, fmt.Errorf("vsock CONNECT %d: reading reply: %w (is the agent running in the guest?)", port, ctxErr(ctx, err))
	}
	if err := checkOK(line); err != nil {
		return nil, fmt.Errorf("vsock CONNECT %d: %w", port, err)
	}
	if !stop() {
		return nil, fmt.Errorf("vsock CONNECT %d: %w", port, ctx.Err())
	}
	c.SetDeadline(time.Time{})
	return br, nil
}

// checkOK accepts firecracker's "OK <port>" reply line.
func checkOK(line string) error {
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "OK" {
		return fmt.Errorf("unexpected reply %q, want \"OK <port>\"", line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		return fmt.Errorf("unexpected reply %q: bad port", line)
	}
	return nil
}

// readLine reads one '\n'-terminated line of at most max bytes.
func readLine(br *bufio.Reader, max int) (string, error) {
	var b []byte
	for len(b) <= max {
		c, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		if c == '\n' {
			return string(b), nil
		}
		b = append(b, c)
	}
	return "", fmt.Errorf("reply line longer than %d bytes", max)
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// bufConn is a net.Conn whose reads drain a bufio.Reader first, so bytes
// read ahead during the handshake are not lost.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection when the underlying one can.
func (c *bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
