package agent

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
)

func TestSyncStripper(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"leading sync line dropped", SyncLine + "yamux-frames", "yamux-frames"},
		{"only the first one", SyncLine + SyncLine, SyncLine},
		{"other data passes", "012345678901234567890", "012345678901234567890"},
		{"short stream passes", "abc", "abc"},
		{"sync line later passes", "x" + SyncLine, "x" + SyncLine},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &syncStripper{rwc: nopRWC{strings.NewReader(tt.in)}}
			got, err := io.ReadAll(s)
			if err != nil || string(got) != tt.want {
				t.Errorf("read %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

type nopRWC struct{ io.Reader }

func (nopRWC) Write(p []byte) (int, error) { return len(p), nil }
func (nopRWC) Close() error                { return nil }

// TestSyncLineEndsStaleSession plays a host that reconnects so quickly that
// the guest saw no hang-up: the same byte stream carries the old session,
// then a new host's SyncLine. The old session must end so that the agent
// can say hello again.
func TestSyncLineEndsStaleSession(t *testing.T) {
	ta := startAgent(t)
	if res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"true"}}, nil, nil); res.Err != nil {
		t.Fatal(res.Err)
	}
	// Write the sync line under the host's yamux session, as a new host would.
	if _, err := io.WriteString(ta.hostConn, SyncLine); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ta.served:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
		ta.served <- nil // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("the stale session survived the sync line")
	}
}

// TestSyncLineOnFreshSession: a host that always sends the sync line first
// gets a working session.
func TestSyncLineOnFreshSession(t *testing.T) {
	guest, host := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, guest, Config{Hello: agentproto.Hello{Version: agentproto.Version}})
	}()
	if _, err := io.WriteString(host, SyncLine); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(host)
	if _, err := agentproto.ReadHello(br); err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{sess: newClientSession(t, br, host), hostConn: host}
	res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"echo", "ok"}}, nil, nil)
	if res.Err != nil || res.Stdout != "ok\n" {
		t.Fatalf("exec after sync line: %+v", res)
	}
	ta.sess.Close()
	host.Close()
	if err := <-served; err != nil {
		t.Errorf("Serve = %v", err)
	}
	guest.Close()

}
