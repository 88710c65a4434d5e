package supervisor

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// AgentConn sends the caller's first bytes right behind its request,
// without waiting for the answer, which the first Read then checks.
func TestAgentConnPipelines(t *testing.T) {
	tests := []struct {
		name    string
		answer  string // the supervisor's reply line; "" closes without one
		wantErr string // in the first Read's error; "" means the agent's bytes arrive
		notRun  bool   // the error is ErrNotRunning
	}{
		{"stream opened", `{"ok":true}`, "", false},
		{"stream refused", `{"error":"opening agent stream: session shutdown"}`, "opening agent stream: session shutdown", false},
		{"supervisor gone mid-call", "", "reading control message", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "sv") // short: sun_path is 108 bytes
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			ln, err := net.Listen("unix", filepath.Join(dir, ControlSocket))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			seen := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				br := bufio.NewReader(c)
				var req request
				readLine(br, &req)
				// The caller's bytes are there before any answer.
				first, _ := br.ReadString('\n')
				seen <- req.Op + " " + first
				if tt.answer != "" {
					io.WriteString(c, tt.answer+"\n"+"from the agent\n")
				}
			}()
			conn, err := AgentConn(context.Background(), dir)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, "from the host\n"); err != nil {
				t.Fatal(err)
			}
			if got := <-seen; got != "agent from the host\n" {
				t.Errorf("supervisor saw %q before answering", got)
			}
			line, err := bufio.NewReader(conn).ReadString('\n')
			switch {
			case tt.wantErr == "" && (err != nil || line != "from the agent\n"):
				t.Errorf("read %q, %v; want the agent's line", line, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("read error %v, want one containing %q", err, tt.wantErr)
			case tt.wantErr != "" && errors.Is(err, ErrNotRunning) != tt.notRun:
				t.Errorf("errors.Is(%v, ErrNotRunning) = %v, want %v", err, !tt.notRun, tt.notRun)
			}
		})
	}
}

func TestAgentConnNoSupervisor(t *testing.T) {
	if _, err := AgentConn(context.Background(), t.TempDir()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("AgentConn without a socket: %v, want ErrNotRunning", err)
	}
}
