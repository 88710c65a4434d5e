package supervisor

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/network"
)

// What a clone is told after a restore: its name and seed always, and a
// network identity only on a tap (user-mode addresses are per VMM).
func TestRestoredMessage(t *testing.T) {
	guest := netip.MustParseAddr("172.16.0.7")
	tap := &netState{mode: NetTap, att: &network.Attachment{VMID: "c1", Tap: network.TapName("c1"),
		MAC: network.GuestMAC(guest), GuestIP: guest,
		Gateway: netip.MustParseAddr("172.16.0.1"), DNS: netip.MustParseAddr("172.16.0.1")}}
	tests := []struct {
		name    string
		net     *netState
		wantNet *agentproto.RestoredNet
	}{
		{"network never set up", nil, nil},
		{"none", &netState{mode: NetNone}, nil},
		{"user: the snapshot's slirp address stays", &netState{mode: NetUser}, nil},
		{"tap: the clone's own lease and MAC", tap,
			&agentproto.RestoredNet{IP: "172.16.0.7/32", Gateway: "172.16.0.1", DNS: "172.16.0.1", MAC: "06:00:ac:10:00:07"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &supervisor{net: tt.net, plan: Plan{Restore: &RestorePlan{Hostname: "c1"}}}
			m, err := s.restoredMessage()
			if err != nil {
				t.Fatal(err)
			}
			if m.Hostname != "c1" || len(m.Seed) == 0 {
				t.Errorf("hostname %q, seed of %d bytes", m.Hostname, len(m.Seed))
			}
			if (m.Net == nil) != (tt.wantNet == nil) || m.Net != nil && *m.Net != *tt.wantNet {
				t.Fatalf("net %+v, want %+v", m.Net, tt.wantNet)
			}
			b, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			// Without a network identity the message is what older agents read.
			if got := strings.Contains(string(b), `"net"`); got != (tt.wantNet != nil) {
				t.Errorf("message %s: has a net field %v", b, got)
			}
		})
	}
}
