package network

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// The test topology, all in namespaces the test makes and deletes:
//
//	guest ns (eth0 172.16.0.x/32) ==veth== host ns (the Manager works here)
//	host ns up0 10.99.0.1/24 ==veth== inet ns up1 10.99.0.2/24
//	inet ns: HTTP on :80, DNS on 10.99.0.2:53, web addresses 203.0.113.10
//	and .20 on lo.
//
// The guest end of each veth stands in for the VM's NIC: Setup adopts the
// host end (VMOptions.Link) in place of a tap.
const (
	inetDNS   = "10.99.0.2:53"
	hostUpIP  = "10.99.0.1"
	webAllow  = "203.0.113.10"
	webDeny   = "203.0.113.20"
	dnsTTLSec = 5
)

var testZone = map[string]string{
	"allowed.test.":       webAllow,
	"denied.test.":        webDeny,
	"a.wild.test.":        webAllow,
	"wild.test.":          webAllow,
	"other.allowed.test.": webDeny,
}

func requireNetTests(t testing.TB) {
	t.Helper()
	if os.Getenv("SMOLVM_VM_TESTS") != "1" {
		t.Skip("network namespace tests need root and netns: set SMOLVM_VM_TESTS=1 to run them")
	}
	if os.Geteuid() != 0 {
		t.Fatal("SMOLVM_VM_TESTS=1 but not root: network namespace tests need root")
	}
	for _, tool := range []string{"ip", "nft", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("SMOLVM_VM_TESTS=1 but %s is missing (tests build their topology with it): %v", tool, err)
		}
	}
}

type topo struct {
	t      testing.TB
	prefix string
	host   string // namespace names
	inet   string
	n      int
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newNS(t testing.TB, name string) {
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

func newTopo(t testing.TB) *topo {
	requireNetTests(t)
	b := make([]byte, 3)
	rand.Read(b)
	p := "smvt" + hex.EncodeToString(b)
	tp := &topo{t: t, prefix: p, host: p + "-host", inet: p + "-inet"}
	newNS(t, tp.host)
	newNS(t, tp.inet)
	run(t, "ip", "-n", tp.host, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", tp.inet)
	run(t, "ip", "-n", tp.host, "addr", "add", hostUpIP+"/24", "dev", "up0")
	run(t, "ip", "-n", tp.host, "link", "set", "up0", "up")
	run(t, "ip", "-n", tp.host, "route", "add", "default", "via", "10.99.0.2")
	run(t, "ip", "-n", tp.inet, "addr", "add", "10.99.0.2/24", "dev", "up1")
	run(t, "ip", "-n", tp.inet, "link", "set", "up1", "up")
	for _, a := range []string{webAllow, webDeny} {
		run(t, "ip", "-n", tp.inet, "addr", "add", a+"/32", "dev", "lo")
	}
	return tp
}

// startInternet runs the fake internet's HTTP and DNS servers.
func (tp *topo) startInternet() {
	t := tp.t
	ln := listenIn(t, tp.inet, "tcp", ":80")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.Context().Value(http.LocalAddrContextKey))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	pc := listenPacketIn(t, tp.inet, inetDNS)
	dnsSrv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		a, ok := testZone[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTLSec},
				A:   net.ParseIP(a),
			})
		}
		w.WriteMsg(m)
	})}
	go dnsSrv.ActivateAndServe()
	t.Cleanup(func() { dnsSrv.Shutdown() })
}

// inNS runs f on a thread inside namespace ns.
func inNS(t testing.TB, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // a thread stuck in a test namespace must not run other tests
		}
	}()
	f()
}

func listenIn(t testing.TB, ns, network, addr string) net.Listener {
	var ln net.Listener
	var err error
	inNS(t, ns, func() { ln, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func listenPacketIn(t testing.TB, ns, addr string) net.PacketConn {
	var pc net.PacketConn
	var err error
	inNS(t, ns, func() { pc, err = net.ListenPacket("udp", addr) })
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// dialIn connects from namespace ns; a dropped SYN shows as a timeout.
func dialIn(t testing.TB, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	inNS(t, ns, func() { c, err = net.DialTimeout(network, addr, 1500*time.Millisecond) })
	return c, err
}

// httpGet fetches http://addr/ from namespace ns.
func httpGet(t testing.TB, ns, addr string) (string, error) {
	c, err := dialIn(t, ns, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
	body, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(body, []byte("HTTP/1.0 200")) {
		return "", fmt.Errorf("unexpected reply %q", body)
	}
	return string(body[bytes.Index(body, []byte("\r\n\r\n"))+4:]), nil
}

// lookup asks the guest's resolver (the gateway, port 53) for name's A
// record from namespace ns.
func lookup(t testing.TB, ns, server, name string) (*dns.Msg, error) {
	c, err := dialIn(t, ns, "udp", server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	co := &dns.Conn{Conn: c}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

// guest is one stand-in VM: a namespace whose eth0 is a veth to the host ns.
type guest struct {
	ns   string
	link string // host end, handed to Setup
	att  *Attachment
}

func (tp *topo) newGuest() *guest {
	tp.n++
	g := &guest{ns: fmt.Sprintf("%s-g%d", tp.prefix, tp.n), link: fmt.Sprintf("gv%d", tp.n)}
	newNS(tp.t, g.ns)
	run(tp.t, "ip", "-n", tp.host, "link", "add", g.link, "type", "veth", "peer", "name", "eth0", "netns", g.ns)
	return g
}

// configure does what the guest agent does with the kernel command line.
func (g *guest) configure(t testing.TB, att *Attachment) {
	t.Helper()
	g.att = att
	gn, ok, err := ParseGuestCmdline("console=ttyS0 " + GuestCmdline(att) + " quiet")
	if err != nil || !ok {
		t.Fatalf("parse guest cmdline: ok=%v err=%v", ok, err)
	}
	run(t, "ip", "-n", g.ns, "addr", "add", gn.IP.String(), "dev", "eth0")
	run(t, "ip", "-n", g.ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", g.ns, "route", "add", gn.Gateway.String(), "dev", "eth0")
	run(t, "ip", "-n", g.ns, "route", "add", "default", "via", gn.Gateway.String())
}

func (g *guest) dnsServer() string { return netip.AddrPortFrom(g.att.DNS, 53).String() }

func (tp *topo) manager(ctx context.Context) *Manager {
	tp.t.Helper()
	m, err := New(ctx, Config{NetNS: "/run/netns/" + tp.host, Upstreams: []string{inetDNS}, MinTTL: 30 * time.Second})
	if err != nil {
		tp.t.Fatalf("new manager: %v", err)
	}
	tp.t.Cleanup(func() { m.Close() })
	return m
}

// setupGuest makes a guest namespace and gives it a network through m.
func (tp *topo) setupGuest(ctx context.Context, m *Manager, id string, opts VMOptions) *guest {
	tp.t.Helper()
	g := tp.newGuest()
	opts.Link = g.link
	att, err := m.Setup(ctx, id, opts)
	if err != nil {
		tp.t.Fatalf("setup %s: %v", id, err)
	}
	g.configure(tp.t, att)
	return g
}

func (tp *topo) nft(args ...string) string {
	return run(tp.t, append([]string{"ip", "netns", "exec", tp.host, "nft"}, args...)...)
}
