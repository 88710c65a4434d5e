package agentproto

import (
	"encoding/json"
	"testing"
)

// Restored.Net is an added field: messages without it still decode, and
// agents that predate it read the rest of a message that has it.
func TestRestoredNetIsCompatible(t *testing.T) {
	net := &RestoredNet{IP: "172.16.0.9/32", Gateway: "172.16.0.1", DNS: "172.16.0.1", MAC: "06:00:ac:10:00:09"}
	tests := []struct {
		name    string
		wire    string
		wantNet *RestoredNet
	}{
		{"from an older host", `{"unix_nano":5,"seed":"AQI=","hostname":"c1"}`, nil},
		{"with a network identity", `{"unix_nano":5,"seed":"AQI=","hostname":"c1","net":{"ip":"172.16.0.9/32","gateway":"172.16.0.1","dns":"172.16.0.1","mac":"06:00:ac:10:00:09"}}`, net},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Restored
			if err := json.Unmarshal([]byte(tt.wire), &r); err != nil {
				t.Fatal(err)
			}
			if r.UnixNano != 5 || string(r.Seed) != "\x01\x02" || r.Hostname != "c1" {
				t.Errorf("decoded %+v", r)
			}
			if (r.Net == nil) != (tt.wantNet == nil) || r.Net != nil && *r.Net != *tt.wantNet {
				t.Errorf("net %+v, want %+v", r.Net, tt.wantNet)
			}
			b, err := json.Marshal(r)
			if err != nil || string(b) != tt.wire {
				t.Errorf("encoded %s (%v), want %s", b, err, tt.wire)
			}
			// An agent built before Net existed.
			var older struct {
				UnixNano int64  `json:"unix_nano"`
				Seed     []byte `json:"seed"`
				Hostname string `json:"hostname,omitempty"`
			}
			if err := json.Unmarshal(b, &older); err != nil || older.Hostname != "c1" || older.UnixNano != 5 {
				t.Errorf("older agent read %+v, %v", older, err)
			}
		})
	}
}
