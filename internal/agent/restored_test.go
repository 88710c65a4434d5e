package agent

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/network"
)

// fakeIdentity records what applyRestored asks of the machine.
type fakeIdentity struct {
	clock    time.Time
	seed     []byte
	hostname string
	gn       network.GuestNet
	mac      string
	resolver netip.Addr
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
		renumber: func(gn network.GuestNet, mac net.HardwareAddr) (string, error) {
			f.gn, f.mac = gn, mac.String()
			return "eth0", step("renumber")
		},
		setResolver: func(a netip.Addr) error { f.resolver = a; return step("resolver") },
	}
}

func TestApplyRestored(t *testing.T) {
	now := time.Date(2026, 11, 30, 10, 0, 0, 123, time.UTC)
	good := agentproto.Restored{UnixNano: now.UnixNano(), Seed: []byte("0123456789abcdef"), Hostname: "clone-1",
		Net: &agentproto.RestoredNet{IP: "172.16.0.9/32", Gateway: "172.16.0.1", DNS: "172.16.0.53", MAC: "06:00:ac:10:00:09"}}
	withNet := func(mut func(*agentproto.RestoredNet)) func(*agentproto.Restored) {
		return func(r *agentproto.Restored) {
			n := *r.Net
			mut(&n)
			r.Net = &n
		}
	}
	tests := []struct {
		name    string
		mut     func(*agentproto.Restored)
		fail    string
		wantErr string
		calls   string
	}{
		{"all applied in order", func(*agentproto.Restored) {}, "", "", "clock entropy hostname renumber resolver"},
		{"no hostname keeps the name", func(r *agentproto.Restored) { r.Hostname = "" }, "", "", "clock entropy renumber resolver"},
		{"no network keeps it", func(r *agentproto.Restored) { r.Net = nil }, "", "", "clock entropy hostname"},
		{"no clock", func(r *agentproto.Restored) { r.UnixNano = 0 }, "", "is not a time", ""},
		{"no seed", func(r *agentproto.Restored) { r.Seed = nil }, "", "seed of 0 bytes", ""},
		{"seed too big", func(r *agentproto.Restored) { r.Seed = make([]byte, agentproto.MaxRestoredSeed+1) }, "", "seed of 4097 bytes", ""},
		{"hostname too long", func(r *agentproto.Restored) { r.Hostname = strings.Repeat("h", 65) }, "", "hostname of 65 bytes", ""},
		{"address without prefix", withNet(func(n *agentproto.RestoredNet) { n.IP = "172.16.0.9" }), "", `network address "172.16.0.9"`, ""},
		{"IPv6 address", withNet(func(n *agentproto.RestoredNet) { n.IP = "fd00::9/128" }), "", "want an IPv4", ""},
		{"bad gateway", withNet(func(n *agentproto.RestoredNet) { n.Gateway = "gw" }), "", `gateway "gw"`, ""},
		{"missing resolver", withNet(func(n *agentproto.RestoredNet) { n.DNS = "" }), "", `resolver ""`, ""},
		{"multicast MAC", withNet(func(n *agentproto.RestoredNet) { n.MAC = "01:00:5e:00:00:01" }), "", "unicast Ethernet", ""},
		{"long MAC", withNet(func(n *agentproto.RestoredNet) { n.MAC = "02:00:00:00:00:00:00:01" }), "", "unicast Ethernet", ""},
		{"clock refused", func(*agentproto.Restored) {}, "clock", "setting the clock: refused", "clock"},
		{"entropy refused", func(*agentproto.Restored) {}, "entropy", "seeding the random pool: refused", "clock entropy"},
		{"renumber refused", func(*agentproto.Restored) {}, "renumber", "renumbering the network as 172.16.0.9/32 (06:00:ac:10:00:09): refused", "clock entropy hostname renumber"},
		{"resolv.conf refused: logged only", func(*agentproto.Restored) {}, "resolver", "", "clock entropy hostname renumber resolver"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good
			tt.mut(&r)
			f := &fakeIdentity{fail: tt.fail}
			err := applyRestored(f.identity(), r, slog.New(slog.DiscardHandler))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("applyRestored = %v, want error %q", err, tt.wantErr)
			}
			if got := strings.Join(f.calls, " "); got != tt.calls {
				t.Fatalf("calls %q, want %q", got, tt.calls)
			}
			if tt.wantErr != "" {
				return
			}
			if !f.clock.Equal(now) || !bytes.Equal(f.seed, r.Seed) || f.hostname != r.Hostname {
				t.Errorf("applied clock %v seed %q hostname %q", f.clock, f.seed, f.hostname)
			}
			if r.Net != nil {
				want := network.GuestNet{IP: netip.MustParsePrefix("172.16.0.9/32"),
					Gateway: netip.MustParseAddr("172.16.0.1"), DNS: netip.MustParseAddr("172.16.0.53")}
				if f.gn != want || f.mac != r.Net.MAC || f.resolver != want.DNS {
					t.Errorf("renumbered to %+v %s with resolver %s, want %+v %s", f.gn, f.mac, f.resolver, want, r.Net.MAC)
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
