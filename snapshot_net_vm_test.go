package smolvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
)

// TestSnapshotClonesOnTap snapshots a VM on the default network (a tap, as
// root), inside the network VM tests' namespaces, and checks that each
// clone and each pool member takes its own lease, MAC and routes, that a
// service started before the snapshot answers on every clone's own
// address through an exposed port, that the origin keeps working, and
// that deleting everything leaves no tap, nftables object or lease.
func TestSnapshotClonesOnTap(t *testing.T) {
	tp := newNetTopo(t)
	b := make([]byte, 2)
	rand.Read(b)
	suffix := hex.EncodeToString(b)

	orig := tp.boot(t, "so", "--dns="+netTestDNS) // no --net: the default
	if n := tp.info(t, orig).Network; n == nil || n.Mode != NetTap {
		t.Fatalf("origin network %+v, want the default tap", n)
	}
	// A server started before the snapshot runs on in every clone.
	tp.wantGuest(t, orig, "mkdir -p /www && hostname > /www/index.html && httpd -p 8080 -h /www && echo started", "started")
	snap := "sn-" + suffix
	tp.mustCLI(t, "snapshot", orig, snap)
	t.Cleanup(func() { tp.cli("snapshot", "rm", snap) })

	var clones []Info
	out := tp.mustCLI(t, "create", "--from-snapshot", snap, "--name", "cl-"+suffix, "--count", "2", "--json")
	if err := json.Unmarshal([]byte(out), &clones); err != nil || len(clones) != 2 {
		t.Fatalf("create --from-snapshot --count 2 --json: %v, %q", err, out)
	}
	for _, c := range clones {
		t.Cleanup(func() { tp.cli("rm", c.ID) })
	}

	ids := []string{clones[0].ID, clones[1].ID, orig} // the origin last: it keeps working
	seen := map[string]string{}                       // addresses and MACs to the VM that has them
	for _, id := range ids {
		ip, mac := tp.checkOwnIdentity(t, id, "http://good.test/")
		for _, v := range []string{ip, mac} {
			if other, dup := seen[v]; dup {
				t.Errorf("%s and %s share %s", other, id, v)
			}
			seen[v] = id
		}
	}

	t.Run("pool on the default network", func(t *testing.T) {
		pool := "pl-" + suffix
		tp.mustCLI(t, "pool", "create", pool, "--image", "tiny", "--size", "1", "--memory", "256")
		t.Cleanup(func() { tp.cli("pool", "rm", pool) })
		id := tp.mustCLI(t, "pool", "acquire", pool)
		t.Cleanup(func() { tp.cli("rm", id) })
		tp.mustCLI(t, "exec", id, "--", "sh", "-c", "mkdir -p /www && httpd -p 8080 -h /www")
		// Pools take no --dns: the resolver's upstream is not the fake
		// internet's, so the member reaches it by address.
		ip, mac := tp.checkOwnIdentity(t, id, "http://"+netTestGood+"/")
		if other, dup := seen[ip]; dup {
			t.Errorf("pool member %s has %s, as %s does", id, ip, other)
		}
		if other, dup := seen[mac]; dup {
			t.Errorf("pool member %s has %s, as %s does", id, mac, other)
		}
		tp.waitPoolReady(t, pool, 1) // the background refill is done before the pool goes
		tp.mustCLI(t, "pool", "rm", pool)
		tp.mustCLI(t, "rm", id)
	})

	t.Run("delete leaves nothing", func(t *testing.T) {
		if left := tp.allTraces(t); len(left) < 6 {
			t.Fatalf("with three vms only %v: the check would prove nothing", left)
		}
		for _, id := range ids {
			tp.mustCLI(t, "rm", id)
		}
		tp.mustCLI(t, "snapshot", "rm", snap)
		if left := tp.allTraces(t); len(left) != 0 {
			t.Fatalf("left after deleting every vm, pool and snapshot: %v", left)
		}
	})
}

// checkOwnIdentity checks that VM id's guest uses the address its lease
// gives (inspect), the MAC derived from it, only that address, and the
// resolver it was given; that a host port exposed to its 8080 reaches the
// httpd serving /www there; and that it fetches url from the fake
// internet. It returns the address and MAC.
func (tp *netTopo) checkOwnIdentity(t *testing.T, id, url string) (ip, mac string) {
	t.Helper()
	n := tp.info(t, id).Network
	if n == nil || n.Mode != NetTap || n.GuestIP == "" {
		t.Fatalf("%s: network %+v, want tap with an address", id, n)
	}
	a, err := netip.ParseAddr(n.GuestIP)
	if err != nil {
		t.Fatalf("%s: inspect gives guest address %q", id, n.GuestIP)
	}
	ip, mac = n.GuestIP, network.GuestMAC(a)
	out, err := tp.guest(id, "hostname > /www/index.html && cat /sys/class/net/eth0/address && ip -4 -o addr show dev eth0 && cat /etc/resolv.conf")
	if err != nil {
		t.Fatalf("%s: %v\n%s", id, err, out)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 3 || lines[0] != mac {
		t.Fatalf("%s: guest MAC and addresses:\n%s\nwant MAC %s", id, out, mac)
	}
	if inet := strings.Count(out, " inet "); inet != 1 || !strings.Contains(lines[1], " inet "+ip+"/32 ") {
		t.Fatalf("%s: eth0 has %d IPv4 addresses:\n%s\nwant only %s/32", id, inet, out, ip)
	}
	if !strings.Contains(out, "nameserver "+n.DNS+"\n") && !strings.HasSuffix(out, "nameserver "+n.DNS) {
		t.Fatalf("%s: resolv.conf lacks nameserver %s:\n%s", id, n.DNS, out)
	}
	t.Logf("%s: inspect says %s on %s; guest: MAC %s, %s", id, n.GuestIP, n.Tap, lines[0], strings.Join(strings.Fields(lines[1]), " "))
	exposed := tp.mustCLI(t, "port", "expose", id, "8080")
	if page, err := tp.hostGet("http://" + exposed + "/"); err != nil || strings.TrimSpace(page) != id {
		t.Fatalf("%s: GET %s from the host: %v %q, want its hostname", id, exposed, err, page)
	}
	tp.wantGuest(t, id, wget(url), "hello from "+netTestGood+":80")
	return ip, mac
}

// waitPoolReady waits until the pool reports ready members.
func (tp *netTopo) waitPoolReady(t *testing.T, pool string, ready int) {
	t.Helper()
	for {
		var pools []PoolInfo
		if err := json.Unmarshal([]byte(tp.mustCLI(t, "pool", "ls", "--json")), &pools); err != nil {
			t.Fatal(err)
		}
		for _, p := range pools {
			if p.Name == pool && p.Ready >= ready && p.Warming == 0 {
				return
			}
		}
		time.Sleep(200 * time.Millisecond) // polls a condition; asserts no time
	}
}

// allTraces lists every smolvm tap in the host namespace, every per-VM
// nftables object or rule, and every lease in the store.
func (tp *netTopo) allTraces(t *testing.T) []string {
	t.Helper()
	var left []string
	for _, l := range strings.Split(mustRun(t, "ip", "-n", tp.host, "-o", "link"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], network.TapPrefix) {
			left = append(left, "tap "+strings.TrimSuffix(f[1], ":"))
		}
	}
	rules, _ := exec.Command("ip", "netns", "exec", tp.host, "nft", "list", "table", "inet", "smolvm").CombinedOutput()
	for _, l := range strings.Split(string(rules), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "chain vm-") || strings.HasPrefix(l, "set vm-") || strings.Contains(l, `"smolvm:`) {
			left = append(left, "nftables "+l)
		}
	}
	st, err := store.Open(context.Background(), tp.data+"/smolvm.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	leases, err := st.Leases(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		left = append(left, fmt.Sprintf("lease %s %s of %s", l.Kind, l.Value, l.VMID))
	}
	return left
}
