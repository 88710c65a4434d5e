package network

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// BenchmarkSetupTeardown measures host-side network setup plus teardown of
// one VM (tap, address, route, tbf, the full nftables rule set) two ways in
// the same run: through this package (netlink + nftables batches) and
// through ip/tc/nft subprocesses doing the same steps (the baseline).
// Needs SMOLVM_VM_TESTS=1 (root, a fresh namespace).
//
// Both report setup, teardown and total ms per VM; the subprocess line also
// reports ratio, the netlink total over its own (when netlink ran first,
// as with -bench SetupTeardown).
func BenchmarkSetupTeardown(b *testing.B) {
	opts := VMOptions{RateMbps: 100, Egress: Policy{Mode: EgressAllowlist}}
	var nl phases
	b.Run("netlink", func(b *testing.B) {
		tp := newTopo(b)
		ctx := context.Background()
		m := tp.manager(ctx)
		p, err := ParsePolicy(EgressAllowlist, []string{"10.0.0.0/8", "pypi.org"})
		if err != nil {
			b.Fatal(err)
		}
		opts.Egress = p
		var ph phases
		for i := 0; b.Loop(); i++ {
			id := fmt.Sprintf("bench-%d", i)
			ph.start()
			if _, err := m.Setup(ctx, id, opts); err != nil {
				b.Fatal(err)
			}
			ph.mid()
			if err := m.Teardown(ctx, id); err != nil {
				b.Fatal(err)
			}
			ph.end()
		}
		ph.report(b)
		nl = ph
	})
	b.Run("subprocess", func(b *testing.B) {
		tp := newTopo(b)
		ctx := context.Background()
		m := tp.manager(ctx) // only for its resolver port
		var ph phases
		inNS(b, tp.host, func() {
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("bench-%d", i)
				ph.start()
				shellSetup(b, id, m.res.port, i == 0)
				ph.mid()
				if i == 0 && !strings.Contains(run(b, "ip", "-n", tp.host, "link"), TapName(id)) {
					b.Fatal("baseline tap is not in the test namespace")
				}
				shellTeardown(b, id)
				ph.end()
			}
		})
		ph.report(b)
		if nl.n > 0 {
			b.ReportMetric(nl.perVM()/ph.perVM(), "ratio")
		}
	})
}

func sh(b testing.TB, stdin string, args ...string) string {
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v\n%s\n%s", strings.Join(args, " "), err, out, stdin)
	}
	return string(out)
}

// phases accumulates setup and teardown time separately.
type phases struct {
	t0, t1          time.Time
	setup, teardown time.Duration
	n               int
}

func (p *phases) start()                { p.t0 = time.Now() }
func (p *phases) mid()                  { p.t1 = time.Now(); p.setup += p.t1.Sub(p.t0) }
func (p *phases) end()                  { p.teardown += time.Since(p.t1); p.n++ }
func ms(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) / 1000 }

// perVM is setup plus teardown, in ms per VM.
func (p *phases) perVM() float64 { return ms(p.setup+p.teardown, p.n) }

func (p *phases) report(b *testing.B) {
	b.ReportMetric(ms(p.setup, p.n), "setup-ms/op")
	b.ReportMetric(ms(p.teardown, p.n), "teardown-ms/op")
	b.ReportMetric(p.perVM(), "total-ms/op")
}

// shellSetup does Setup's kernel steps with ip, tc and one nft batch; like
// Setup it declares the table and base chains only the first time.
func shellSetup(b testing.TB, id string, resolverPort int, skeleton bool) {
	tap, ip := TapName(id), "172.16.0.2"
	sh(b, "", "ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr")
	sh(b, "", "ip", "link", "set", "dev", tap, "alias", aliasPrefix+id)
	sh(b, "", "ip", "addr", "add", "172.16.0.1/32", "dev", tap)
	sh(b, "", "ip", "link", "set", "dev", tap, "up")
	sh(b, "", "ip", "route", "add", ip+"/32", "dev", tap, "src", "172.16.0.1", "scope", "link")
	sh(b, "", "tc", "qdisc", "replace", "dev", tap, "root", "tbf", "rate", "100mbit", "burst", "125000", "latency", "50ms")
	v, c := "vm-"+id, `comment "smolvm:`+id+`"`
	script := ""
	if skeleton {
		script = `table inet smolvm {
  chain pre { type filter hook prerouting priority raw; policy accept; }
  chain fwd-from-vm { type filter hook forward priority filter; policy accept; }
  chain fwd-to-vm { type filter hook forward priority 1; policy accept; }
  chain input { type filter hook input priority filter; policy accept; }
  chain nat-pre { type nat hook prerouting priority dstnat; policy accept; }
  chain nat-out { type nat hook output priority -100; policy accept; }
  chain nat-post { type nat hook postrouting priority srcnat; policy accept; }
}
`
	}
	script += fmt.Sprintf(`table inet smolvm {
  set %[1]s-cidr { type ipv4_addr; flags interval; elements = { 10.0.0.0/8 } }
  set %[1]s-dns { type ipv4_addr; flags timeout; }
  chain %[1]s-pre { meta nfproto ipv6 drop %[2]s; ip saddr != %[3]s drop %[2]s; limit rate over 12500000 bytes/second burst 125000 bytes drop %[2]s; }
  chain %[1]s-egress { ip daddr @%[1]s-cidr accept %[2]s; ip daddr @%[1]s-dns accept %[2]s; drop %[2]s; }
  chain %[1]s-out { ct state established,related accept %[2]s; ip daddr 172.16.0.0/24 drop %[2]s; jump %[1]s-egress %[2]s; }
  chain %[1]s-in { ct state established,related accept %[2]s; ct status dnat accept %[2]s; drop %[2]s; }
  chain %[1]s-host { ct state established,related accept %[2]s; ip daddr 172.16.0.1 udp dport %[5]d accept %[2]s; ip daddr 172.16.0.1 tcp dport %[5]d accept %[2]s; drop %[2]s; }
}
add rule inet smolvm pre iifname "%[4]s" jump %[1]s-pre %[2]s
add rule inet smolvm fwd-from-vm iifname "%[4]s" jump %[1]s-out %[2]s
add rule inet smolvm fwd-to-vm oifname "%[4]s" jump %[1]s-in %[2]s
add rule inet smolvm input iifname "%[4]s" jump %[1]s-host %[2]s
add rule inet smolvm nat-pre iifname "%[4]s" ip daddr 172.16.0.1 udp dport 53 redirect to :%[5]d %[2]s
add rule inet smolvm nat-pre iifname "%[4]s" ip daddr 172.16.0.1 tcp dport 53 redirect to :%[5]d %[2]s
add rule inet smolvm nat-post ip saddr %[3]s oifname "up0" masquerade %[2]s
`, v, c, ip, tap, resolverPort)
	sh(b, script, "nft", "-f", "-")
}

var handleRE = regexp.MustCompile(`comment "smolvm:([^"]+)" # handle (\d+)`)

// shellTeardown lists the table with handles, deletes the VM's rules,
// chains and sets in one nft batch, and deletes the tap.
func shellTeardown(b testing.TB, id string) {
	listing := sh(b, "", "nft", "-a", "list", "table", "inet", "smolvm")
	var script strings.Builder
	chain := ""
	for _, line := range strings.Split(listing, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "chain" {
			chain = f[1]
		}
		if m := handleRE.FindStringSubmatch(line); m != nil && m[1] == id && !strings.HasPrefix(chain, "vm-") {
			fmt.Fprintf(&script, "delete rule inet smolvm %s handle %s\n", chain, m[2])
		}
	}
	for _, role := range []string{chainPre, chainOut, chainIn, chainHost, chainEgress} {
		fmt.Fprintf(&script, "flush chain inet smolvm %s\ndelete chain inet smolvm %s\n", objName(id, role), objName(id, role))
	}
	fmt.Fprintf(&script, "delete set inet smolvm %s\ndelete set inet smolvm %s\n", objName(id, setCIDR), objName(id, setDNS))
	sh(b, script.String(), "nft", "-f", "-")
	sh(b, "", "ip", "link", "del", TapName(id))
}
