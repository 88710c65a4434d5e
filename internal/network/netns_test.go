package network

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func mustPolicy(t *testing.T, mode string, allow ...string) Policy {
	t.Helper()
	p, err := ParsePolicy(mode, allow)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func wantHTTP(t *testing.T, ns, addr string) {
	t.Helper()
	body, err := httpGet(t, ns, addr)
	if err != nil {
		t.Fatalf("GET %s from %s: %v (want success)", addr, ns, err)
	}
	if !strings.HasPrefix(body, "hello from") {
		t.Fatalf("GET %s: body %q", addr, body)
	}
}

func wantBlocked(t *testing.T, ns, addr string) {
	t.Helper()
	if body, err := httpGet(t, ns, addr); err == nil {
		t.Fatalf("GET %s from %s succeeded (%q), want it blocked", addr, ns, body)
	}
}

func wantAnswer(t *testing.T, ns, server, name, ip string) {
	t.Helper()
	r, err := lookup(t, ns, server, name)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != ip {
		t.Fatalf("lookup %s: rcode %s answer %v, want %s", name, dns.RcodeToString[r.Rcode], r.Answer, ip)
	}
}

func wantRefused(t *testing.T, ns, server, name string) {
	t.Helper()
	r, err := lookup(t, ns, server, name)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	if r.Rcode != dns.RcodeRefused {
		t.Fatalf("lookup %s: rcode %s answer %v, want REFUSED", name, dns.RcodeToString[r.Rcode], r.Answer)
	}
}

func TestEgressAllowlistAndRuntimeChange(t *testing.T) {
	tp := newTopo(t)
	tp.startInternet()
	ctx := context.Background()
	m := tp.manager(ctx)
	g := tp.setupGuest(ctx, m, "vm-a", VMOptions{Egress: mustPolicy(t, EgressAllowlist, "allowed.test", "*.wild.test")})
	dnsAddr := g.dnsServer()

	// Before any lookup even the allowed address is closed.
	wantBlocked(t, g.ns, webAllow+":80")
	wantAnswer(t, g.ns, dnsAddr, "allowed.test", webAllow)
	wantHTTP(t, g.ns, webAllow+":80")
	wantAnswer(t, g.ns, dnsAddr, "a.wild.test", webAllow)
	wantRefused(t, g.ns, dnsAddr, "denied.test")
	wantRefused(t, g.ns, dnsAddr, "wild.test") // "*.x" does not cover x
	wantRefused(t, g.ns, dnsAddr, "other.allowed.test")
	wantBlocked(t, g.ns, webDeny+":80") // direct IP, never resolved

	set := tp.nft("list", "set", "inet", "smolvm", "vm-vm-a-dns")
	if !strings.Contains(set, webAllow) || !strings.Contains(set, "expires") || strings.Contains(set, webDeny) {
		t.Fatalf("dns set after lookups:\n%s", set)
	}

	// CIDR entries work without DNS.
	if err := m.SetPolicy(ctx, "vm-a", mustPolicy(t, EgressAllowlist, webDeny+"/32")); err != nil {
		t.Fatal(err)
	}
	wantHTTP(t, g.ns, webDeny+":80")
	wantBlocked(t, g.ns, webAllow+":80") // the old policy's DNS answers are gone
	wantRefused(t, g.ns, dnsAddr, "allowed.test")

	if err := m.SetPolicy(ctx, "vm-a", mustPolicy(t, EgressDenyAll)); err != nil {
		t.Fatal(err)
	}
	wantBlocked(t, g.ns, webDeny+":80")
	wantRefused(t, g.ns, dnsAddr, "denied.test")

	if err := m.SetPolicy(ctx, "vm-a", mustPolicy(t, EgressAllowAll)); err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, g.ns, dnsAddr, "denied.test", webDeny)
	wantHTTP(t, g.ns, webDeny+":80")
	wantHTTP(t, g.ns, webAllow+":80")
}

func TestIsolation(t *testing.T) {
	tp := newTopo(t)
	tp.startInternet()
	ctx := context.Background()
	m := tp.manager(ctx)
	a := tp.setupGuest(ctx, m, "vm-a", VMOptions{})
	b := tp.setupGuest(ctx, m, "vm-b", VMOptions{})
	if a.att.GuestIP == b.att.GuestIP {
		t.Fatalf("both guests got %s", a.att.GuestIP)
	}
	// Services on the guest A, on the host's uplink address and on the gateway.
	serveHTTP(t, listenIn(t, a.ns, "tcp", ":9000"))
	serveHTTP(t, listenIn(t, tp.host, "tcp", ":7000"))

	wantHTTP(t, a.ns, webAllow+":80")                       // allow-all reaches the internet
	wantBlocked(t, b.ns, a.att.GuestIP.String()+":9000")    // VM to VM
	wantBlocked(t, a.ns, hostUpIP+":7000")                  // VM to a host address
	wantBlocked(t, a.ns, a.att.Gateway.String()+":7000")    // VM to the gateway, not DNS
	wantHTTP(t, tp.host, a.att.GuestIP.String()+":9000")    // the host itself may reach the guest
	wantBlocked(t, tp.inet, a.att.GuestIP.String()+":9000") // the outside may not (no route anyway)

	// A spoofed source address is dropped before anything else. The routes
	// make the spoofed connection work if the packets got through.
	run(t, "ip", "-n", a.ns, "addr", "add", "172.16.0.99/32", "dev", "eth0")
	run(t, "ip", "-n", tp.inet, "route", "add", "172.16.0.0/24", "via", "10.99.0.1")
	run(t, "ip", "-n", tp.host, "route", "add", "172.16.0.99/32", "dev", a.att.Tap)
	var err error
	inNS(t, a.ns, func() {
		d := net.Dialer{Timeout: 1500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP("172.16.0.99")}}
		var c net.Conn
		if c, err = d.Dial("tcp", webAllow+":80"); err == nil {
			c.Close()
		}
	})
	if err == nil {
		t.Fatal("connection from a spoofed source address succeeded")
	}
	wantHTTP(t, a.ns, webAllow+":80") // the real address still works
}

func TestIsolationOptIn(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	m := tp.manager(ctx)
	a := tp.setupGuest(ctx, m, "vm-a", VMOptions{AllowVMs: true, AllowHost: true})
	b := tp.setupGuest(ctx, m, "vm-b", VMOptions{AllowVMs: true})
	c := tp.setupGuest(ctx, m, "vm-c", VMOptions{})
	serveHTTP(t, listenIn(t, a.ns, "tcp", ":9000"))
	serveHTTP(t, listenIn(t, tp.host, "tcp", ":7000"))

	wantHTTP(t, b.ns, a.att.GuestIP.String()+":9000")
	wantBlocked(t, c.ns, a.att.GuestIP.String()+":9000")
	wantHTTP(t, a.ns, hostUpIP+":7000")
	wantBlocked(t, b.ns, hostUpIP+":7000")
}

func TestExposePort(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	m := tp.manager(ctx)
	a := tp.setupGuest(ctx, m, "vm-a", VMOptions{Egress: mustPolicy(t, EgressDenyAll)})
	b := tp.setupGuest(ctx, m, "vm-b", VMOptions{})
	serveHTTP(t, listenIn(t, a.ns, "tcp", ":8080"))

	e, err := m.ExposePort(ctx, "vm-a", 8080, 0, "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if e.HostPort < 20000 || e.HostPort > 29999 {
		t.Fatalf("host port %d outside the default range", e.HostPort)
	}
	hp := itoa(e.HostPort)
	wantHTTP(t, tp.host, "127.0.0.1:"+hp)               // loopback: the proxy
	wantHTTP(t, tp.host, hostUpIP+":"+hp)               // a host address from the host: nat-out
	wantHTTP(t, tp.inet, hostUpIP+":"+hp)               // from outside: nat-pre
	wantBlocked(t, b.ns, a.att.Gateway.String()+":"+hp) // not a path from another VM
	if got := m.Ports("vm-a"); len(got) != 1 || got[0] != e {
		t.Fatalf("Ports = %v, want [%v]", got, e)
	}

	if _, err := m.ExposePort(ctx, "vm-a", 8080, e.HostPort, ""); !errors.Is(err, ErrExists) {
		t.Fatalf("exposing host port %d twice: %v, want ErrExists", e.HostPort, err)
	}
	if _, err := m.ExposePort(ctx, "nope", 8080, 0, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("exposing on an unknown vm: %v, want ErrNotFound", err)
	}
	if _, err := m.ExposePort(ctx, "vm-a", 70000, 0, ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("guest port 70000: %v, want ErrInvalid", err)
	}

	if err := m.ClosePort(ctx, "vm-a", e.HostPort); err != nil {
		t.Fatal(err)
	}
	wantBlocked(t, tp.host, "127.0.0.1:"+hp)
	wantBlocked(t, tp.inet, hostUpIP+":"+hp)
	if rules := tp.nft("list", "chain", "inet", "smolvm", "nat-pre"); strings.Contains(rules, "dnat") {
		t.Fatalf("dnat rule left after ClosePort:\n%s", rules)
	}
	leases, _ := m.leases.List(ctx, "vm-a")
	if len(leases) != 1 || leases[0].Kind != KindIP {
		t.Fatalf("leases after ClosePort: %v, want only the address", leases)
	}
	// A loopback-only exposure on an explicit port.
	e2, err := m.ExposePort(ctx, "vm-a", 8080, 28080, "")
	if err != nil {
		t.Fatal(err)
	}
	wantHTTP(t, tp.host, "127.0.0.1:28080")
	wantBlocked(t, tp.inet, hostUpIP+":28080")
	_ = e2
}

func serveHTTP(t *testing.T, ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				c.Read(buf)
				c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nhello from " + c.LocalAddr().String()))
			}()
		}
	}()
}

func itoa(i int) string { return strconv.Itoa(i) }
