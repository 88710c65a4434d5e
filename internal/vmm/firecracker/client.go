package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// APIError is a failure reply (4xx or 5xx) from Firecracker's API.
type APIError struct {
	Status int    // HTTP status code
	Fault  string // Firecracker's fault_message, or the raw body when it sent none
}

func (e *APIError) Error() string {
	if e.Fault == "" {
		return fmt.Sprintf("firecracker api: status %d", e.Status)
	}
	return fmt.Sprintf("firecracker api: status %d: %s", e.Status, e.Fault)
}

// maxReplyBody bounds what is read of an API reply.
const maxReplyBody = 1 << 20

// client speaks HTTP/1.1 to Firecracker's API over its unix socket. It is
// safe for concurrent use.
type client struct {
	sock string
	http *http.Client
}

func newClient(sock string) *client {
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConns:       2,
		DisableCompression: true,
	}
	return &client{sock: sock, http: &http.Client{Transport: t}}
}

// close drops idle connections to the API socket.
func (c *client) close() { c.http.CloseIdleConnections() }

// put sends PUT path with body encoded as JSON and expects no content back.
func (c *client) put(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPut, path, body, nil)
}

// patch sends PATCH path with body encoded as JSON.
func (c *client) patch(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPatch, path, body, nil)
}

// get sends GET path and decodes the JSON reply into out.
func (c *client) get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// do makes one request. Errors name the request; a failure reply is an
// *APIError in the chain.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	if err := c.roundTrip(ctx, method, path, body, out); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

func (c *client) roundTrip(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBody))
	if err != nil {
		return fmt.Errorf("reading reply: %w", err)
	}
	if resp.StatusCode >= 300 {
		return apiError(resp.StatusCode, reply)
	}
	if out != nil {
		if err := json.Unmarshal(reply, out); err != nil {
			return fmt.Errorf("decoding reply: %w", err)
		}
	}
	return nil
}

func apiError(status int, body []byte) *APIError {
	var fault struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(body, &fault) == nil && fault.FaultMessage != "" {
		return &APIError{Status: status, Fault: fault.FaultMessage}
	}
	return &APIError{Status: status, Fault: strings.TrimSpace(string(body))}
}
