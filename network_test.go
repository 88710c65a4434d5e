package smolvm

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNetConfig(t *testing.T) {
	priv := netPrivileged()
	defaultMode := NetUser
	if priv {
		defaultMode = NetTap
	}
	tests := []struct {
		name     string
		cfg      Config
		needPriv bool    // the case assumes root with CAP_NET_ADMIN
		want     NetMode // resulting mode; "" = expect ErrInvalid
		errHas   string
		check    func(Config) bool
	}{
		{name: "default by privilege", cfg: Config{}, want: defaultMode,
			check: func(c Config) bool { return c.Egress == EgressAllowAll }},
		{name: "none", cfg: Config{Net: NetNone}, want: NetNone},
		{name: "user", cfg: Config{Net: NetUser}, want: NetUser},
		{name: "unknown mode", cfg: Config{Net: "bridge"}, errHas: `network mode "bridge"`},
		{name: "tap allowlist", cfg: Config{Net: NetTap, Egress: "allowlist", Allow: []string{"10.0.0.0/8", "example.org", "*.example.org"}},
			needPriv: true, want: NetTap},
		{name: "tap deny-all with rate", cfg: Config{Net: NetTap, Egress: "deny-all", NetRateMbps: 10}, needPriv: true, want: NetTap},
		{name: "allow without allowlist", cfg: Config{Net: NetTap, Allow: []string{"example.org"}}, needPriv: true, errHas: "takes no allow entries"},
		{name: "bad allow entry", cfg: Config{Net: NetTap, Egress: "allowlist", Allow: []string{"exa mple"}}, needPriv: true, errHas: "not a CIDR, address or domain"},
		{name: "ipv6 allow entry", cfg: Config{Net: NetTap, Egress: "allowlist", Allow: []string{"2001:db8::/32"}}, needPriv: true, errHas: "only IPv4"},
		{name: "unknown egress", cfg: Config{Net: NetTap, Egress: "some"}, needPriv: true, errHas: `egress mode "some"`},
		{name: "negative rate", cfg: Config{Net: NetTap, NetRateMbps: -1}, needPriv: true, errHas: "net rate -1"},
		{name: "huge rate", cfg: Config{Net: NetTap, NetRateMbps: MaxNetRateMbps + 1}, needPriv: true, errHas: "net rate"},
		{name: "dns normalized", cfg: Config{Net: NetTap, DNS: []string{"10.1.2.3", "10.1.2.4:5353"}}, needPriv: true, want: NetTap,
			check: func(c Config) bool { return slices.Equal(c.DNS, []string{"10.1.2.3:53", "10.1.2.4:5353"}) }},
		{name: "dns not an address", cfg: Config{Net: NetTap, DNS: []string{"dns.example"}}, needPriv: true, errHas: "dns server"},
		{name: "user with egress policy", cfg: Config{Net: NetUser, Egress: "deny-all"}, errHas: "need --net tap"},
		{name: "user with rate", cfg: Config{Net: NetUser, NetRateMbps: 5}, errHas: "need --net tap"},
		{name: "user with allow-vms", cfg: Config{Net: NetUser, AllowVMs: true}, errHas: "need --net tap"},
		{name: "user on firecracker", cfg: Config{Net: NetUser, Backend: "firecracker"}, errHas: "no user-mode networking"},
		{name: "none with options", cfg: Config{Net: NetNone, AllowHost: true}, errHas: "--net none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needPriv && !priv {
				t.Skip("case needs root with CAP_NET_ADMIN")
			}
			c, err := tt.cfg.withDefaults()
			if tt.want == "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("withDefaults = %v, want ErrInvalid containing %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Net != tt.want || (tt.check != nil && !tt.check(c)) {
				t.Fatalf("got %+v, want mode %s", c, tt.want)
			}
		})
	}
	if !priv {
		if _, err := (Config{Net: NetTap}).withDefaults(); !errors.Is(err, ErrInvalid) {
			t.Errorf("tap without privilege: %v, want ErrInvalid", err)
		}
	}
}
