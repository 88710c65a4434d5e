package agent

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// fakeIdentity records what applyRestored asks of the machine.
type fakeIdentity struct {
	clock    time.Time
	seed     []byte
	hostname string
	calls    []string
	fail     string // the call that fails
}

func (f *fakeIdentity) identity() identity {
	step := func(name string) error {
		f.calls = append(f.calls, name)
		if name == f.fail {
			return errors.New("refused")
		}
		return nil
	}
	return identity{
		setClock:    func(t time.Time) error { f.clock = t; return step("clock") },
		addEntropy:  func(b []byte) error { f.seed = b; return step("entropy") },
		setHostname: func(h string) error { f.hostname = h; return step("hostname") },
	}
}

func TestApplyRestored(t *testing.T) {
	now := time.Date(2026, 11, 30, 10, 0, 0, 123, time.UTC)
	good := agentproto.Restored{UnixNano: now.UnixNano(), Seed: []byte("0123456789abcdef"), Hostname: "clone-1"}
	tests := []struct {
		name    string
		mut     func(*agentproto.Restored)
		fail    string
		wantErr string
		calls   string
	}{
		{"all applied in order", func(*agentproto.Restored) {}, "", "", "clock entropy hostname"},
		{"no hostname keeps the name", func(r *agentproto.Restored) { r.Hostname = "" }, "", "", "clock entropy"},
		{"no clock", func(r *agentproto.Restored) { r.UnixNano = 0 }, "", "is not a time", ""},
		{"no seed", func(r *agentproto.Restored) { r.Seed = nil }, "", "seed of 0 bytes", ""},
		{"seed too big", func(r *agentproto.Restored) { r.Seed = make([]byte, agentproto.MaxRestoredSeed+1) }, "", "seed of 4097 bytes", ""},
		{"hostname too long", func(r *agentproto.Restored) { r.Hostname = strings.Repeat("h", 65) }, "", "hostname of 65 bytes", ""},
		{"clock refused", func(*agentproto.Restored) {}, "clock", "setting the clock: refused", "clock"},
		{"entropy refused", func(*agentproto.Restored) {}, "entropy", "seeding the random pool: refused", "clock entropy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good
			tt.mut(&r)
			f := &fakeIdentity{fail: tt.fail}
			err := applyRestored(f.identity(), r)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("applyRestored = %v, want error %q", err, tt.wantErr)
			}
			if got := strings.Join(f.calls, " "); got != tt.calls {
				t.Fatalf("calls %q, want %q", got, tt.calls)
			}
			if tt.wantErr == "" {
				if !f.clock.Equal(now) || !bytes.Equal(f.seed, r.Seed) || f.hostname != r.Hostname {
					t.Errorf("applied clock %v seed %q hostname %q", f.clock, f.seed, f.hostname)
				}
			}
		})
	}
}

func TestSyncLineMatchesProtocol(t *testing.T) {
	if SyncLine != agentproto.SyncLine {
		t.Fatalf("agent.SyncLine %q != agentproto.SyncLine %q", SyncLine, agentproto.SyncLine)
	}
}
