package network

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// kernelTraces lists what the host namespace still holds for VMs: smolvm
// links, routes to the pool, per-VM chains, sets and tagged rules.
func (tp *topo) kernelTraces() []string {
	var out []string
	links := run(tp.t, "ip", "-n", tp.host, "-o", "link", "show")
	for _, l := range strings.Split(links, "\n") {
		if strings.Contains(l, TapPrefix) {
			out = append(out, "link: "+l)
		}
	}
	if r := strings.TrimSpace(run(tp.t, "ip", "-n", tp.host, "route", "show", "172.16.0.0/24")); r != "" {
		out = append(out, "route: "+r)
	}
	ruleset, err := exec.Command("ip", "netns", "exec", tp.host, "nft", "list", "table", "inet", "smolvm").CombinedOutput()
	if err == nil {
		for _, l := range strings.Split(string(ruleset), "\n") {
			if strings.Contains(l, "vm-") || strings.Contains(l, rulePrefix) {
				out = append(out, "nft: "+strings.TrimSpace(l))
			}
		}
	}
	return out
}

func (tp *topo) tableExists() bool {
	return exec.Command("ip", "netns", "exec", tp.host, "nft", "list", "table", "inet", "smolvm").Run() == nil
}

func TestTeardownRemovesEverything(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	m := tp.manager(ctx)
	a := tp.setupGuest(ctx, m, "vm-a", VMOptions{RateMbps: 20, Egress: mustPolicy(t, EgressAllowlist, "allowed.test", "10.0.0.0/8")})
	serveHTTP(t, listenIn(t, a.ns, "tcp", ":8080"))
	e, err := m.ExposePort(ctx, "vm-a", 8080, 0, "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	qd := run(t, "tc", "-n", tp.host, "qdisc", "show", "dev", a.att.Tap)
	if !strings.Contains(qd, "tbf") || !strings.Contains(qd, "rate 20Mbit") {
		t.Fatalf("qdisc on %s: %s, want tbf rate 20Mbit", a.att.Tap, qd)
	}
	if got := len(tp.kernelTraces()); got < 10 {
		t.Fatalf("only %d kernel objects after Setup: %v", got, tp.kernelTraces())
	}
	wantHTTP(t, tp.host, "127.0.0.1:"+itoa(e.HostPort))

	if err := m.Teardown(ctx, "vm-a"); err != nil {
		t.Fatal(err)
	}
	if tr := tp.kernelTraces(); len(tr) > 0 {
		t.Fatalf("left after Teardown:\n%s", strings.Join(tr, "\n"))
	}
	if l, _ := m.leases.List(ctx, ""); len(l) > 0 {
		t.Fatalf("leases after Teardown: %v", l)
	}
	if _, err := dialIn(t, tp.host, "tcp", "127.0.0.1:"+itoa(e.HostPort)); err == nil {
		t.Fatalf("port proxy still listening after Teardown")
	}
	if err := m.Teardown(ctx, "vm-a"); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	// The address is free again.
	b := tp.setupGuest(ctx, m, "vm-b", VMOptions{})
	if b.att.GuestIP != a.att.GuestIP {
		t.Fatalf("next guest got %s, want the released %s", b.att.GuestIP, a.att.GuestIP)
	}
}

// A supervisor dies without tearing down: a new Manager (with the same
// leases) sweeps what it left, keeps what is owned, and drops the table
// once nothing is owned.
func TestSweepOrphans(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	leases := &MemLeases{}
	cfg := Config{NetNS: "/run/netns/" + tp.host, Upstreams: []string{inetDNS}, Leases: leases}
	dead, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	keep := tp.setupGuest(ctx, dead, "vm-keep", VMOptions{})
	tp.setupGuest(ctx, dead, "vm-orphan", VMOptions{RateMbps: 5})
	dead.Close() // the kernel objects stay, as after a SIGKILL

	m, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	swept, err := m.Sweep(ctx, func(id string) bool { return id == "vm-keep" })
	if err != nil {
		t.Fatal(err)
	}
	if len(swept) != 1 || swept[0] != "vm-orphan" {
		t.Fatalf("swept %v, want [vm-orphan]", swept)
	}
	for _, tr := range tp.kernelTraces() {
		if strings.Contains(tr, "orphan") || strings.Contains(tr, TapName("vm-orphan")) {
			t.Fatalf("orphan left: %s", tr)
		}
	}
	if l, _ := leases.List(ctx, ""); len(l) != 1 || l[0].VMID != "vm-keep" {
		t.Fatalf("leases after sweep: %v", l)
	}
	wantHTTPFromHostTo(t, tp, keep)

	// A fresh Manager can tear down a VM it never set up, from kernel state.
	if err := m.Teardown(ctx, "vm-keep"); err != nil {
		t.Fatal(err)
	}
	if tr := tp.kernelTraces(); len(tr) > 0 {
		t.Fatalf("left after Teardown by a new Manager:\n%s", strings.Join(tr, "\n"))
	}
	if !tp.tableExists() {
		t.Fatal("Teardown removed the table; only Sweep should")
	}
	if _, err := m.Sweep(ctx, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if tp.tableExists() {
		t.Fatal("table still there after Sweep with nothing owned")
	}
}

func wantHTTPFromHostTo(t *testing.T, tp *topo, g *guest) {
	t.Helper()
	serveHTTP(t, listenIn(t, g.ns, "tcp", ":9100"))
	wantHTTP(t, tp.host, g.att.GuestIP.String()+":9100")
}

// Sweep also removes smolvm-named links whose alias names no VM.
func TestSweepForeignAlias(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	m := tp.manager(ctx)
	run(t, "ip", "-n", tp.host, "link", "add", TapPrefix+"deadbeef", "type", "veth", "peer", "name", "foreign0")
	if _, err := m.Sweep(ctx, func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if tr := tp.kernelTraces(); len(tr) > 0 {
		t.Fatalf("left after Sweep: %v", tr)
	}
}

func TestSetupTapAndRollback(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	m := tp.manager(ctx)

	// A real tap, as a VMM would open it.
	att, err := m.Setup(ctx, "vm-tap", VMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	details := run(t, "ip", "-n", tp.host, "-d", "link", "show", att.Tap)
	if !strings.Contains(details, "tun type tap") || !strings.Contains(details, "alias smolvm vm=vm-tap") {
		t.Fatalf("link %s:\n%s", att.Tap, details)
	}
	if addr := run(t, "ip", "-n", tp.host, "addr", "show", att.Tap); !strings.Contains(addr, "172.16.0.1/32") {
		t.Fatalf("gateway address missing on %s:\n%s", att.Tap, addr)
	}
	if att.MAC != GuestMAC(att.GuestIP) || att.NetIf(0, 0).Tap != att.Tap {
		t.Fatalf("attachment %+v", att)
	}
	if _, err := m.Setup(ctx, "vm-tap", VMOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Setup: %v, want ErrExists", err)
	}
	if !strings.Contains(run(t, "ip", "-n", tp.host, "link"), att.Tap) {
		t.Fatal("failed second Setup removed the first one's tap")
	}

	// Failures leave nothing: a missing link to adopt, and bad input.
	bad := []struct {
		id   string
		opts VMOptions
	}{
		{"vm-bad", VMOptions{Link: "no-such-link"}},
		{"vm bad", VMOptions{}},
		{"vm-bad", VMOptions{RateMbps: -1}},
		{"vm-bad", VMOptions{Egress: Policy{Mode: "some"}}},
	}
	for _, b := range bad {
		if _, err := m.Setup(ctx, b.id, b.opts); err == nil {
			t.Fatalf("Setup(%q, %+v) succeeded", b.id, b.opts)
		}
	}
	if l, _ := m.leases.List(ctx, "vm-bad"); len(l) > 0 {
		t.Fatalf("leases left by failed Setup: %v", l)
	}
	for _, tr := range tp.kernelTraces() {
		if strings.Contains(tr, "vm-bad") || strings.Contains(tr, TapName("vm-bad")) {
			t.Fatalf("failed Setup left %s", tr)
		}
	}
	if err := m.Teardown(ctx, "vm-tap"); err != nil {
		t.Fatal(err)
	}
	if tr := tp.kernelTraces(); len(tr) > 0 {
		t.Fatalf("left after Teardown: %v", tr)
	}
}

// TestSetupSkipsRoutedAddress: another smolvm (another data dir, so another
// lease table) already routes the pool's first guest address; Setup must
// take the next one rather than fail, and release what it passed over.
func TestSetupSkipsRoutedAddress(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	m := tp.manager(ctx)
	run(t, "ip", "-n", tp.host, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	run(t, "ip", "-n", tp.host, "link", "set", "other0", "up")
	run(t, "ip", "-n", tp.host, "route", "add", "172.16.0.2/32", "dev", "other0")
	att, err := m.Setup(ctx, "vm-next", VMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := att.GuestIP.String(); got != "172.16.0.3" {
		t.Fatalf("guest address %s, want 172.16.0.3 (.2 is routed elsewhere)", got)
	}
	leases, _ := m.leases.List(ctx, "")
	if len(leases) != 1 || leases[0].Addr() != att.GuestIP {
		t.Fatalf("leases after skipping: %v", leases)
	}
	if err := m.Teardown(ctx, "vm-next"); err != nil {
		t.Fatal(err)
	}
}
