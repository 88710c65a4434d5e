package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/vmm"
)

// The modes that need no privilege: what setupNet adds to the VMM spec and
// the kernel command line, and what it refuses.
func TestSetupNetWithoutTap(t *testing.T) {
	tests := []struct {
		name        string
		backend     string
		net         *NetPlan
		wantNet     []vmm.NetIf
		wantCmdline string
		wantErr     string
	}{
		{name: "no plan", backend: "qemu", wantCmdline: "quiet"},
		{name: "none", backend: "qemu", net: &NetPlan{Mode: NetNone}, wantCmdline: "quiet"},
		{name: "user", backend: "qemu", net: &NetPlan{Mode: NetUser},
			wantNet:     []vmm.NetIf{{Mode: "user", MAC: "06:00:0a:00:02:0f"}},
			wantCmdline: "quiet smolvm.ip=10.0.2.15/24 smolvm.gw=10.0.2.2 smolvm.dns=10.0.2.3"},
		{name: "user on firecracker", backend: "firecracker", net: &NetPlan{Mode: NetUser}, wantErr: "no user-mode networking"},
		{name: "unknown mode", backend: "qemu", net: &NetPlan{Mode: "bridge"}, wantErr: `network mode "bridge"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, _ := openLeaseStores(t)
			s := &supervisor{log: slog.New(slog.DiscardHandler), opts: Options{Store: st, ID: "a"},
				plan: Plan{Backend: tt.backend, Net: tt.net, VMM: vmm.Spec{Cmdline: "quiet"}}}
			err := s.setupNet(context.Background())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("setupNet = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.plan.VMM.Net) != len(tt.wantNet) || (len(tt.wantNet) > 0 && s.plan.VMM.Net[0] != tt.wantNet[0]) {
				t.Errorf("spec net %+v, want %+v", s.plan.VMM.Net, tt.wantNet)
			}
			if s.plan.VMM.Cmdline != tt.wantCmdline {
				t.Errorf("cmdline %q, want %q", s.plan.VMM.Cmdline, tt.wantCmdline)
			}
			// The agent must read back what the supervisor wrote.
			if gn, ok, err := network.ParseGuestCmdline(s.plan.VMM.Cmdline); err != nil || ok != (tt.wantNet != nil) ||
				(ok && gn.IP.String() != "10.0.2.15/24") {
				t.Errorf("ParseGuestCmdline = %+v, %v, %v", gn, ok, err)
			}
			// Operations that need a network fail clearly without one.
			if tt.net == nil || tt.net.Mode == NetNone {
				if _, err := s.exposePort(context.Background(), NetRequest{GuestPort: 80}); !errors.Is(err, network.ErrInvalid) {
					t.Errorf("expose without network: %v, want ErrInvalid", err)
				}
				if err := s.setEgress(context.Background(), NetRequest{Egress: "deny-all"}); !errors.Is(err, errors.ErrUnsupported) {
					t.Errorf("egress without network: %v, want ErrUnsupported", err)
				}
			}
			s.teardownNet()
			s.teardownNet() // idempotent
		})
	}
}
