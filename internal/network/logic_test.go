package network

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func TestPool(t *testing.T) {
	tests := []struct {
		subnet          string
		gw, first, last string
		err             bool
	}{
		{"172.16.0.0/24", "172.16.0.1", "172.16.0.2", "172.16.0.254", false},
		{"10.200.0.0/16", "10.200.0.1", "10.200.0.2", "10.200.255.254", false},
		{"192.168.5.8/29", "192.168.5.9", "192.168.5.10", "192.168.5.14", false},
		{"172.16.0.1/24", "", "", "", true}, // host bits
		{"172.16.0.0/30", "", "", "", true}, // too small
		{"10.0.0.0/8", "", "", "", true},    // too big
		{"fd00::/64", "", "", "", true},     // IPv6
	}
	for _, tt := range tests {
		p, err := NewPool(netip.MustParsePrefix(tt.subnet))
		if (err != nil) != tt.err {
			t.Fatalf("NewPool(%s) err = %v, want error %v", tt.subnet, err, tt.err)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("NewPool(%s) err = %v, want ErrInvalid", tt.subnet, err)
			}
			continue
		}
		r := p.GuestRange()
		if p.Gateway.String() != tt.gw || u32ToAddr(r.Min).String() != tt.first || u32ToAddr(r.Max).String() != tt.last {
			t.Fatalf("%s: gw %s range %s-%s", tt.subnet, p.Gateway, u32ToAddr(r.Min), u32ToAddr(r.Max))
		}
		if !p.Contains(netip.MustParseAddr(tt.first)) || p.Contains(p.Gateway) {
			t.Fatalf("%s: Contains wrong", tt.subnet)
		}
	}
}

func TestMemLeases(t *testing.T) {
	ctx := context.Background()
	var l MemLeases
	r := Range{Min: 10, Max: 12}
	for i, want := range []uint32{10, 11, 12} {
		got, err := l.Acquire(ctx, "vm"+itoa(i), KindPort, r, 0)
		if err != nil || got.Value != want {
			t.Fatalf("acquire %d: %v %v, want %d", i, got, err, want)
		}
	}
	if _, err := l.Acquire(ctx, "vmx", KindPort, r, 0); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full pool: %v, want ErrExhausted", err)
	}
	if _, err := l.Acquire(ctx, "vmx", KindPort, r, 11); !errors.Is(err, ErrLeaseTaken) {
		t.Fatalf("taken value: %v, want ErrLeaseTaken", err)
	}
	if _, err := l.Acquire(ctx, "vm1", KindPort, r, 11); err != nil {
		t.Fatalf("re-acquire own value: %v", err)
	}
	if _, err := l.Acquire(ctx, "vmx", KindIP, r, 0); err != nil {
		t.Fatalf("kinds are separate pools: %v", err)
	}
	l.Release(ctx, Lease{VMID: "vm0", Kind: KindPort, Value: 11}) // not vm0's: no effect
	l.Release(ctx, Lease{VMID: "vm1", Kind: KindPort, Value: 11})
	if got, _ := l.Acquire(ctx, "vmy", KindPort, r, 0); got.Value != 11 {
		t.Fatalf("released value not reused: got %d", got.Value)
	}
	all, _ := l.List(ctx, "")
	mine, _ := l.List(ctx, "vmy")
	if len(all) != 4 || len(mine) != 1 || all[0].Kind != KindIP {
		t.Fatalf("List: all %v mine %v", all, mine)
	}
	edge := Range{Min: 0xfffffffe, Max: 0xffffffff}
	var m MemLeases
	for range 2 {
		if _, err := m.Acquire(ctx, "e", KindIP, edge, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Acquire(ctx, "e", KindIP, edge, 0); !errors.Is(err, ErrExhausted) {
		t.Fatalf("range ending at MaxUint32: %v", err)
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		mode    string
		allow   []string
		want    string
		wantErr bool
	}{
		{"", nil, "allow-all", false},
		{"deny-all", nil, "deny-all", false},
		{"allowlist", []string{"10.1.2.3/8", "1.2.3.4", "PyPI.org.", "*.GitHub.com"}, "allowlist:10.0.0.0/8,1.2.3.4/32,pypi.org,*.github.com", false},
		{"allowlist", nil, "allowlist:", false},
		{"allow-all", []string{"x.org"}, "", true},
		{"block", nil, "", true},
		{"allowlist", []string{"fd00::/8"}, "", true},
		{"allowlist", []string{"a..b"}, "", true},
		{"allowlist", []string{"*"}, "", true},
		{"allowlist", []string{"a.*.org"}, "", true},
		{"allowlist", []string{"-bad.org"}, "", true},
		{"allowlist", []string{"exa mple.org"}, "", true},
	}
	for _, tt := range tests {
		p, err := ParsePolicy(tt.mode, tt.allow)
		if (err != nil) != tt.wantErr {
			t.Fatalf("ParsePolicy(%q, %q) err = %v", tt.mode, tt.allow, err)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err %v is not ErrInvalid", err)
			}
			continue
		}
		if p.String() != tt.want {
			t.Fatalf("ParsePolicy(%q, %q) = %s, want %s", tt.mode, tt.allow, p, tt.want)
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Validate(%s): %v", p, err)
		}
	}
}

func TestAllowsName(t *testing.T) {
	p, err := ParsePolicy(EgressAllowlist, []string{"pypi.org", "*.github.com", "*.a.b.test"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want bool
	}{
		{"pypi.org.", true},
		{"PYPI.ORG", true},
		{"files.pypi.org.", false},
		{"github.com.", false},
		{"api.github.com.", true},
		{"x.y.github.com", true},
		{"evilgithub.com.", false},
		{"github.com.evil.org.", false},
		{"c.a.b.test.", true},
		{"a.b.test.", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := p.AllowsName(tt.name); got != tt.want {
			t.Errorf("AllowsName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if !(Policy{}).AllowsName("anything.") || (Policy{Mode: EgressDenyAll}).AllowsName("pypi.org.") {
		t.Error("allow-all / deny-all name checks wrong")
	}
}

func TestGuestCmdline(t *testing.T) {
	att := &Attachment{GuestIP: netip.MustParseAddr("172.16.0.7"), Gateway: netip.MustParseAddr("172.16.0.1"), DNS: netip.MustParseAddr("172.16.0.1")}
	line := GuestCmdline(att)
	if line != "smolvm.ip=172.16.0.7/32 smolvm.gw=172.16.0.1 smolvm.dns=172.16.0.1" {
		t.Fatalf("GuestCmdline = %q", line)
	}
	tests := []struct {
		cmdline string
		ok      bool
		err     bool
	}{
		{"console=ttyS0 " + line + " quiet", true, false},
		{"console=ttyS0 quiet", false, false},
		{"smolvm.ip=172.16.0.7 smolvm.gw=172.16.0.1 smolvm.dns=172.16.0.1", false, true},
		{"smolvm.ip=172.16.0.7/32 smolvm.dns=172.16.0.1", false, true},
		{"smolvm.ip=172.16.0.7/32 smolvm.gw=x smolvm.dns=172.16.0.1", false, true},
	}
	for _, tt := range tests {
		n, ok, err := ParseGuestCmdline(tt.cmdline)
		if ok != tt.ok || (err != nil) != tt.err {
			t.Fatalf("ParseGuestCmdline(%q) = %v, %v, %v", tt.cmdline, n, ok, err)
		}
		if ok && (n.IP != netip.MustParsePrefix("172.16.0.7/32") || n.Gateway != att.Gateway || n.DNS != att.DNS) {
			t.Fatalf("parsed %+v", n)
		}
	}
	if GuestMAC(att.GuestIP) != "06:00:ac:10:00:07" {
		t.Fatalf("GuestMAC = %s", GuestMAC(att.GuestIP))
	}
}

func TestHostFwd(t *testing.T) {
	tests := []struct {
		addr      string
		host, gst int
		add, del  string
		err       bool
	}{
		{"", 8080, 80, "hostfwd_add net0 tcp:127.0.0.1:8080-:80", "hostfwd_remove net0 tcp:127.0.0.1:8080", false},
		{"0.0.0.0", 2222, 22, "hostfwd_add net0 tcp:0.0.0.0:2222-:22", "hostfwd_remove net0 tcp:0.0.0.0:2222", false},
		{"::1", 1, 1, "", "", true},
		{"", 0, 80, "", "", true},
		{"", 80, 65536, "", "", true},
	}
	for _, tt := range tests {
		add, err := HostFwdAdd("net0", tt.addr, tt.host, tt.gst)
		if (err != nil) != tt.err || add != tt.add {
			t.Fatalf("HostFwdAdd(%q, %d, %d) = %q, %v", tt.addr, tt.host, tt.gst, add, err)
		}
		if tt.err {
			continue
		}
		if del, _ := HostFwdRemove("net0", tt.addr, tt.host); del != tt.del {
			t.Fatalf("HostFwdRemove = %q, want %q", del, tt.del)
		}
	}
}

func TestNames(t *testing.T) {
	for _, id := range []string{"a", "vm-1", "VM_2.x", "vm-in-out-egress"} {
		if err := checkVMID(id); err != nil {
			t.Fatalf("checkVMID(%q): %v", id, err)
		}
		if n := TapName(id); len(n) != 15 || n[:len(TapPrefix)] != TapPrefix {
			t.Fatalf("TapName(%q) = %q", id, n)
		}
		for _, role := range vmObjectRoles {
			if got, ok := vmOfObject(objName(id, role)); !ok || got != id {
				t.Fatalf("vmOfObject(%q) = %q, %v", objName(id, role), got, ok)
			}
		}
		for _, port := range []int{0, 8080} {
			if got, p, ok := vmOfTag(ruleTag(id, port)); !ok || got != id || p != port {
				t.Fatalf("vmOfTag(%q) = %q %d %v", ruleTag(id, port), got, p, ok)
			}
		}
	}
	for _, id := range []string{"", "-a", "a b", "a/b", "a:b", string(make([]byte, 65))} {
		if checkVMID(id) == nil {
			t.Fatalf("checkVMID(%q) accepted", id)
		}
	}
	for _, name := range []string{"pre", "vm-", "vm-x-other", "vm--in"} {
		if id, ok := vmOfObject(name); ok {
			t.Fatalf("vmOfObject(%q) = %q", name, id)
		}
	}
}

func TestIntervalElements(t *testing.T) {
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	tests := []struct {
		in   []netip.Prefix
		want []string // start, end(exclusive, marked !) pairs
	}{
		{pfx("10.0.0.0/8"), []string{"10.0.0.0", "!11.0.0.0"}},
		{pfx("10.1.0.0/16", "10.0.0.0/8", "192.168.1.1/32"), []string{"10.0.0.0", "!11.0.0.0", "192.168.1.1", "!192.168.1.2"}},
		{pfx("10.0.0.0/24", "10.0.1.0/24"), []string{"10.0.0.0", "!10.0.2.0"}},
		{pfx("0.0.0.0/0"), []string{"0.0.0.0"}},
		{nil, nil},
	}
	for _, tt := range tests {
		var got []string
		for _, e := range intervalElements(tt.in) {
			a, _ := netip.AddrFromSlice(e.Key)
			s := a.String()
			if e.IntervalEnd {
				s = "!" + s
			}
			got = append(got, s)
		}
		if !slices.Equal(got, tt.want) {
			t.Fatalf("intervalElements(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestReadResolvConf(t *testing.T) {
	got, err := readResolvConf("testdata/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.255.255.53:53", "[fd00::1]:53"}; !slices.Equal(got, want) {
		t.Fatalf("readResolvConf = %v, want %v", got, want)
	}
	if _, err := readResolvConf("testdata/missing"); err == nil {
		t.Fatal("missing file accepted")
	}
}
