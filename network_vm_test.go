package smolvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/vmtest"
)

// The topology of the network VM tests, all in namespaces the test makes:
//
//	host ns "<p>-h": the smolvm CLI, supervisors, QEMU and the taps run
//	  here (under `ip netns exec`); up0 10.98.0.1/24, default via 10.98.0.2
//	inet ns "<p>-i": up1 10.98.0.2/24; DNS on 10.98.0.2:53; HTTP on :80 of
//	  203.0.113.10 (good.test, x.wild.test) and 203.0.113.20 (bad.test)
//
// The host ns's only route out leads to the fake internet, and the VMs'
// resolver forwards to its DNS server (--dns), so nothing leaves these
// namespaces.
const (
	netTestDNS  = "10.98.0.2"
	netTestGood = "203.0.113.10"
	netTestBad  = "203.0.113.20"
)

var netTestZone = map[string]string{
	"good.test.":   netTestGood,
	"x.wild.test.": netTestGood,
	"bad.test.":    netTestBad,
}

type netTopo struct {
	host, inet string // namespace names
	bin, data  string
}

func newNetTopo(t *testing.T) *netTopo {
	t.Helper()
	vmtest.Require(t, "ip", "nft")
	if os.Geteuid() != 0 {
		t.Fatalf("%s=1 but not root: the network VM tests make namespaces and taps", vmtest.EnvVar)
	}
	b := make([]byte, 3)
	rand.Read(b)
	p := "smvn" + hex.EncodeToString(b)
	tp := &netTopo{host: p + "-h", inet: p + "-i", bin: vmtest.Binary(t)}
	for _, ns := range []string{tp.host, tp.inet} {
		mustRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	mustRun(t, "ip", "-n", tp.host, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", tp.inet)
	mustRun(t, "ip", "-n", tp.host, "addr", "add", "10.98.0.1/24", "dev", "up0")
	mustRun(t, "ip", "-n", tp.host, "link", "set", "up0", "up")
	mustRun(t, "ip", "-n", tp.host, "route", "add", "default", "via", netTestDNS)
	mustRun(t, "ip", "-n", tp.inet, "addr", "add", netTestDNS+"/24", "dev", "up1")
	mustRun(t, "ip", "-n", tp.inet, "link", "set", "up1", "up")
	for _, a := range []string{netTestGood, netTestBad} {
		mustRun(t, "ip", "-n", tp.inet, "addr", "add", a+"/32", "dev", "lo")
	}
	tp.startInternet(t)
	// A data dir of its own: cleanup must not touch other tests' VMs.
	var err error
	if tp.data, err = os.MkdirTemp("", "smvn"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(tp.data)
		}
	})
	return tp
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs f on a thread inside network namespace ns; sockets f makes stay
// in ns.
func inNS(t *testing.T, ns string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromName(ns)
		if err == nil {
			err = netns.Set(h)
			h.Close()
		}
		if err == nil {
			err = f()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatalf("in namespace %s: %v", ns, err)
	}
}

func serveHello(t *testing.T, ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.Context().Value(http.LocalAddrContextKey))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// startInternet runs the fake internet's HTTP and DNS servers.
func (tp *netTopo) startInternet(t *testing.T) {
	var ln net.Listener
	var pc net.PacketConn
	inNS(t, tp.inet, func() (err error) {
		if ln, err = net.Listen("tcp4", ":80"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", netTestDNS+":53")
		return err
	})
	serveHello(t, ln)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		if ip, ok := netTestZone[strings.ToLower(q.Name)]; ok && q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 5 IN A %s", q.Name, ip))
			m.Answer = append(m.Answer, rr)
		} else if !ok {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
}

// cli runs the smolvm binary inside the host namespace.
func (tp *netTopo) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	argv := append([]string{"netns", "exec", tp.host, tp.bin, "--data-dir", tp.data}, args...)
	out, err := exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (tp *netTopo) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := tp.cli(args...)
	if err != nil {
		t.Fatalf("smolvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// boot creates and starts a tiny VM with the given flags, deleted at the end.
func (tp *netTopo) boot(t *testing.T, name string, flags ...string) string {
	t.Helper()
	b := make([]byte, 2)
	rand.Read(b)
	id := name + "-" + hex.EncodeToString(b)
	args := append([]string{"create", "--name", id, "--image", "tiny", "--memory", "256", "--start"}, flags...)
	t.Cleanup(func() { tp.cli("rm", id) })
	tp.mustCLI(t, args...)
	return id
}

// guest runs a shell script in VM id and returns its output and error.
func (tp *netTopo) guest(id, script string) (string, error) {
	return tp.cli("exec", id, "--", "sh", "-c", script)
}

// wantGuest runs script in the guest and wants it to succeed with output
// containing want.
func (tp *netTopo) wantGuest(t *testing.T, id, script, want string) {
	t.Helper()
	out, err := tp.guest(id, script)
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("in %s: %q: got %v, %q; want success with %q", id, script, err, out, want)
	}
}

// wantGuestFails runs script in the guest and wants it to fail without
// printing notWant.
func (tp *netTopo) wantGuestFails(t *testing.T, id, script, notWant string) {
	t.Helper()
	out, err := tp.guest(id, script)
	if err == nil || strings.Contains(out, notWant) {
		t.Fatalf("in %s: %q: got %v, %q; want failure without %q", id, script, err, out, notWant)
	}
}

// wget fetches url in the guest, giving up after 5 s (busybox 1.35's own
// -T crashes).
func wget(url string) string { return "timeout 5 wget -q -O - " + url }

// hostGet fetches url from inside the host namespace.
func (tp *netTopo) hostGet(url string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", tp.host, "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", url).CombinedOutput()
	return string(out), err
}

// traces lists what of VM id is left in the host namespace and the store.
func (tp *netTopo) traces(t *testing.T, id string) []string {
	t.Helper()
	var left []string
	if out := mustRun(t, "ip", "-n", tp.host, "-o", "link"); strings.Contains(out, network.TapName(id)) {
		left = append(left, "tap "+network.TapName(id))
	}
	rules, _ := exec.Command("ip", "netns", "exec", tp.host, "nft", "list", "table", "inet", "smolvm").CombinedOutput()
	if strings.Contains(string(rules), "vm-"+id+"-") || strings.Contains(string(rules), "smolvm:"+id) {
		left = append(left, "nftables objects")
	}
	st, err := store.Open(context.Background(), tp.data+"/smolvm.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	leases, err := st.Leases(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		left = append(left, "lease "+l.Kind+" "+l.Value)
	}
	return left
}

func (tp *netTopo) info(t *testing.T, id string) Info {
	t.Helper()
	var info Info
	if err := json.Unmarshal([]byte(tp.mustCLI(t, "inspect", "--json", id)), &info); err != nil {
		t.Fatal(err)
	}
	return info
}

func TestNetworkTapEndToEnd(t *testing.T) {
	tp := newNetTopo(t)
	dnsFlag := "--dns=" + netTestDNS

	// a: allowlist good.test; b: allow-all. Both serve HTTP on 8080.
	a := tp.boot(t, "na", "--net", "tap", "--egress", "allowlist", "--allow", "good.test", dnsFlag)
	b := tp.boot(t, "nb", "--net", "tap", "--net-rate", "40", dnsFlag)
	httpd := func(id string) string {
		return "mkdir -p /www && echo page-of-" + id + " > /www/index.html && httpd -p 8080 -h /www"
	}
	for _, id := range []string{a, b} {
		tp.wantGuest(t, id, httpd(id)+" && echo started", "started")
	}
	ipA, ipB := tp.info(t, a).Network.GuestIP, tp.info(t, b).Network.GuestIP
	if ipA == "" || ipB == "" || ipA == ipB {
		t.Fatalf("guest addresses %q and %q", ipA, ipB)
	}

	t.Run("rate limit", func(t *testing.T) {
		tap := tp.info(t, b).Network.Tap
		if out := mustRun(t, "tc", "-n", tp.host, "qdisc", "show", "dev", tap); !strings.Contains(out, "tbf") || !strings.Contains(out, "rate 40Mbit") {
			t.Fatalf("qdisc of %s: %q, want tbf rate 40Mbit", tap, out)
		}
		rules := mustRun(t, "ip", "netns", "exec", tp.host, "nft", "list", "chain", "inet", "smolvm", "vm-"+b+"-pre")
		if !strings.Contains(rules, "limit rate") {
			t.Fatalf("pre chain of %s has no upload limit:\n%s", b, rules)
		}
	})
	t.Run("allowlist", func(t *testing.T) {
		tp.wantGuest(t, a, wget("http://good.test/"), "hello from "+netTestGood+":80")
		tp.wantGuestFails(t, a, "nslookup bad.test", netTestBad)
		tp.wantGuestFails(t, a, wget("http://"+netTestBad+"/"), "hello")
	})
	t.Run("allow-all", func(t *testing.T) {
		tp.wantGuest(t, b, "nslookup bad.test", netTestBad)
		tp.wantGuest(t, b, wget("http://"+netTestBad+"/"), "hello from "+netTestBad+":80")
	})
	t.Run("vm to vm blocked", func(t *testing.T) {
		tp.wantGuest(t, a, wget("http://127.0.0.1:8080/"), "page-of-"+a) // the server is up
		tp.wantGuestFails(t, b, wget("http://"+ipA+":8080/"), "page-of")
		tp.wantGuestFails(t, a, wget("http://"+ipB+":8080/"), "page-of")
	})
	t.Run("host blocked except dns", func(t *testing.T) {
		var ln net.Listener
		inNS(t, tp.host, func() (err error) {
			ln, err = net.Listen("tcp4", ":0")
			return err
		})
		serveHello(t, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		if out, err := tp.hostGet(fmt.Sprintf("http://10.98.0.1:%d/", port)); err != nil || !strings.Contains(out, "hello") {
			t.Fatalf("the host's server does not answer on the host: %v %q", err, out)
		}
		for _, addr := range []string{"10.98.0.1", tp.info(t, b).Network.Gateway} {
			tp.wantGuestFails(t, b, wget(fmt.Sprintf("http://%s:%d/", addr, port)), "hello")
		}
	})

	var exposed string
	t.Run("expose port", func(t *testing.T) {
		exposed = tp.mustCLI(t, "port", "expose", a, "8080")
		if !strings.HasPrefix(exposed, "127.0.0.1:") {
			t.Fatalf("port expose printed %q", exposed)
		}
		out, err := tp.hostGet("http://" + exposed + "/")
		if err != nil || !strings.Contains(out, "page-of-"+a) {
			t.Fatalf("GET %s from the host: %v %q", exposed, err, out)
		}
		var ports []Port
		if err := json.Unmarshal([]byte(tp.mustCLI(t, "port", "ls", "--json", a)), &ports); err != nil ||
			len(ports) != 1 || ports[0].GuestPort != 8080 || fmt.Sprintf("%s:%d", ports[0].Address, ports[0].HostPort) != exposed {
			t.Fatalf("port ls: %v %+v, want %s->8080", err, ports, exposed)
		}
		if out := tp.mustCLI(t, "inspect", a); !strings.Contains(out, exposed+"->8080") || !strings.Contains(out, ipA) {
			t.Fatalf("inspect lacks the port or address:\n%s", out)
		}
		// A second exposure, closed again.
		second := tp.mustCLI(t, "port", "expose", a, "8080")
		port := second[strings.LastIndex(second, ":")+1:]
		tp.mustCLI(t, "port", "close", a, port)
		if out, err := tp.hostGet("http://" + second + "/"); err == nil {
			t.Fatalf("closed port %s still answers: %q", second, out)
		}
		if out, err := tp.cli("port", "close", a, port); err == nil || !strings.Contains(out, "not found") {
			t.Fatalf("closing it twice: %v %q, want not found", err, out)
		}
	})

	t.Run("egress change on a running vm", func(t *testing.T) {
		tp.mustCLI(t, "egress", "set", b, "--egress", "deny-all")
		tp.wantGuestFails(t, b, "nslookup good.test", netTestGood)
		tp.wantGuestFails(t, b, wget("http://"+netTestGood+"/"), "hello")
		tp.mustCLI(t, "egress", "set", a, "--egress", "allowlist", "--allow", "*.wild.test")
		tp.wantGuest(t, a, wget("http://x.wild.test/"), "hello from "+netTestGood)
		tp.wantGuestFails(t, a, "nslookup good.test", netTestGood)
		tp.mustCLI(t, "egress", "set", a, "--egress", "allow-all")
		tp.wantGuest(t, a, wget("http://"+netTestBad+"/"), "hello from "+netTestBad)
		if out, err := tp.cli("egress", "set", a, "--egress", "allowlist", "--allow", "not a name"); err == nil || !strings.Contains(out, "invalid") {
			t.Fatalf("bad allow entry: %v %q, want invalid", err, out)
		}
		if got := tp.info(t, b).Config.Egress; got != EgressDenyAll {
			t.Fatalf("config keeps egress %q, want deny-all", got)
		}
	})

	t.Run("delete removes everything", func(t *testing.T) {
		if left := tp.traces(t, a); len(left) < 2 {
			t.Fatalf("before delete only %v: the check would prove nothing", left)
		}
		tp.mustCLI(t, "rm", a)
		if left := tp.traces(t, a); len(left) != 0 {
			t.Fatalf("left after delete: %v", left)
		}
		if out, err := tp.hostGet("http://" + exposed + "/"); err == nil {
			t.Fatalf("exposed port %s answers after delete: %q", exposed, out)
		}
	})

	t.Run("supervisor killed, then cleanup", func(t *testing.T) {
		tp.mustCLI(t, "port", "expose", b, "8080")
		pid := tp.info(t, b).SupervisorPID
		if pid == 0 {
			t.Fatal("no supervisor pid")
		}
		syscall.Kill(pid, syscall.SIGKILL)
		out := tp.mustCLI(t, "cleanup")
		if !strings.Contains(out, "vm "+b+" (error)") {
			t.Fatalf("cleanup said %q, want it to remove vm %s", out, b)
		}
		if left := tp.traces(t, b); len(left) != 0 {
			t.Fatalf("left after kill and cleanup: %v", left)
		}
	})

	t.Run("state lost, then cleanup sweeps", func(t *testing.T) {
		c := tp.boot(t, "nc", "--net", "tap", dnsFlag)
		pid := tp.info(t, c).SupervisorPID
		syscall.Kill(pid, syscall.SIGKILL)
		st, err := store.Open(context.Background(), tp.data+"/smolvm.db")
		if err != nil {
			t.Fatal(err)
		}
		err = st.DeleteVM(context.Background(), c) // as if the database had been lost
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		out := tp.mustCLI(t, "cleanup")
		if !strings.Contains(out, "network of vm "+c) {
			t.Fatalf("cleanup said %q, want it to sweep the network of %s", out, c)
		}
		if left := tp.traces(t, c); len(left) != 0 {
			t.Fatalf("left after sweep: %v", left)
		}
	})
}

func TestNetworkUserMode(t *testing.T) {
	tp := newNetTopo(t)
	// A server on the host's loopback: slirp's 10.0.2.2 is the host.
	var ln net.Listener
	inNS(t, tp.host, func() (err error) {
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	})
	serveHello(t, ln)
	port := ln.Addr().(*net.TCPAddr).Port

	id := tp.boot(t, "nu", "--net", "user")
	if n := tp.info(t, id).Network; n == nil || n.Mode != NetUser || n.GuestIP != "10.0.2.15" {
		t.Fatalf("network %+v, want user 10.0.2.15", n)
	}
	tp.wantGuest(t, id, "ip -4 addr show eth0; ip route", "10.0.2.15/24")
	tp.wantGuest(t, id, wget(fmt.Sprintf("http://10.0.2.2:%d/", port)), "hello from 127.0.0.1")

	tp.wantGuest(t, id, "mkdir -p /www && echo user-page > /www/index.html && httpd -p 8080 -h /www && echo ok", "ok")
	exposed := tp.mustCLI(t, "port", "expose", id, "8080")
	if out, err := tp.hostGet("http://" + exposed + "/"); err != nil || !strings.Contains(out, "user-page") {
		t.Fatalf("GET %s from the host: %v %q", exposed, err, out)
	}
	if out := tp.mustCLI(t, "port", "ls", id); !strings.Contains(out, "8080") {
		t.Fatalf("port ls: %q", out)
	}
	hostPort := exposed[strings.LastIndex(exposed, ":")+1:]
	tp.mustCLI(t, "port", "close", id, hostPort)
	if out, err := tp.hostGet("http://" + exposed + "/"); err == nil {
		t.Fatalf("closed port answers: %q", out)
	}
	if out, err := tp.cli("egress", "set", id, "--egress", "deny-all"); err == nil || !strings.Contains(out, "--net tap") {
		t.Fatalf("egress on a user-mode vm: %v %q, want a clear refusal", err, out)
	}
	tp.mustCLI(t, "port", "expose", id, "8080")
	tp.mustCLI(t, "rm", "-f", id) // docker's spelling is taken too
	if left := tp.traces(t, id); len(left) != 0 {
		t.Fatalf("left after delete: %v", left)
	}
}
