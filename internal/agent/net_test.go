package agent

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/smolvm/smolvm/internal/network"
)

func fakeLink(name, mac string, flags net.Flags) netlink.Link {
	hw, _ := net.ParseMAC(mac)
	if mac == "" {
		hw = nil
	}
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw, Flags: flags}}
}

func TestPickNIC(t *testing.T) {
	lo := fakeLink("lo", "00:00:00:00:00:00", net.FlagLoopback)
	eth0 := fakeLink("eth0", "06:00:ac:10:00:02", 0)
	eth1 := fakeLink("eth1", "52:54:00:12:34:56", 0)
	sit := fakeLink("sit0", "", 0)
	tests := []struct {
		name  string
		links []netlink.Link
		mac   string
		want  string
	}{
		{"by mac", []netlink.Link{lo, eth1, eth0}, "06:00:AC:10:00:02", "eth0"},
		{"only ethernet link", []netlink.Link{lo, sit, eth1}, "06:00:ac:10:00:02", "eth1"},
		{"two others: none", []netlink.Link{lo, eth0, eth1}, "06:00:0a:00:02:0f", ""},
		{"loopback only", []netlink.Link{lo}, "06:00:ac:10:00:02", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if l := pickNIC(tt.links, tt.mac); l != nil {
				got = l.Attrs().Name
			}
			if got != tt.want {
				t.Fatalf("pickNIC = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestWriteResolvConf(t *testing.T) {
	dns := netip.MustParseAddr("172.16.0.1")
	tests := []struct {
		name    string
		prepare func(t *testing.T, etc string) // etc is the directory
	}{
		{"missing /etc", func(t *testing.T, etc string) {}},
		{"existing file", func(t *testing.T, etc string) {
			mustWrite(t, filepath.Join(etc, "resolv.conf"), "nameserver 9.9.9.9\n")
		}},
		{"symlink is replaced, target untouched", func(t *testing.T, etc string) {
			mustWrite(t, filepath.Join(etc, "target"), "keep\n")
			if err := os.Symlink("target", filepath.Join(etc, "resolv.conf")); err != nil {
				t.Fatal(err)
			}
		}},
		{"planted temp symlink is not followed", func(t *testing.T, etc string) {
			mustWrite(t, filepath.Join(etc, "target"), "keep\n")
			if err := os.Symlink("target", filepath.Join(etc, "resolv.conf.smolvm")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			etc := filepath.Join(t.TempDir(), "etc")
			if tt.name != "missing /etc" {
				if err := os.Mkdir(etc, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			tt.prepare(t, etc)
			path := filepath.Join(etc, "resolv.conf")
			if err := writeResolvConf(path, dns); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(path)
			if err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("resolv.conf is not a regular file: %v %v", fi, err)
			}
			if b, _ := os.ReadFile(path); string(b) != "nameserver 172.16.0.1\n" {
				t.Fatalf("resolv.conf = %q", b)
			}
			if b, err := os.ReadFile(filepath.Join(etc, "target")); err == nil && string(b) != "keep\n" {
				t.Fatalf("symlink target written through: %q", b)
			}
		})
	}
}

func TestResolvConfSet(t *testing.T) {
	dns := netip.MustParseAddr("172.16.0.1")
	const want = "nameserver 172.16.0.1\n"
	tests := []struct {
		name     string
		prepare  func(t *testing.T, etc, run string)
		bindErr  error
		wantBind bool // run bound over etc; else etc itself holds want
	}{
		{"regular file is bound over, not written", func(t *testing.T, etc, run string) {
			mustWrite(t, etc, "nameserver 9.9.9.9\n")
		}, nil, true},
		{"missing file is written", func(t *testing.T, etc, run string) {}, nil, false},
		{"symlink is replaced by a file", func(t *testing.T, etc, run string) {
			if err := os.Symlink("elsewhere", etc); err != nil {
				t.Fatal(err)
			}
		}, nil, false},
		{"failed bind falls back to writing", func(t *testing.T, etc, run string) {
			mustWrite(t, etc, "nameserver 9.9.9.9\n")
		}, errors.New("EPERM"), false},
		{"bound already: rewritten in place", func(t *testing.T, etc, run string) {
			mustWrite(t, run, "nameserver 10.0.0.1\n")
			if err := os.Link(run, etc); err != nil { // the same file, as a bind shows it
				t.Fatal(err)
			}
		}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			r := resolvConf{etc: filepath.Join(dir, "etc", "resolv.conf"), run: filepath.Join(dir, "run", "smolvm", "resolv.conf")}
			for _, d := range []string{filepath.Dir(r.etc), filepath.Dir(r.run)} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			tt.prepare(t, r.etc, r.run)
			var bound [][2]string
			r.bind = func(src, dst string) error {
				bound = append(bound, [2]string{src, dst})
				return tt.bindErr
			}
			if err := r.set(dns); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(r.run); string(b) != want {
				t.Errorf("run file = %q, want %q", b, want)
			}
			if tt.wantBind {
				if len(bound) != 1 || bound[0] != [2]string{r.run, r.etc} {
					t.Errorf("binds = %q, want one of run over etc", bound)
				}
				if b, _ := os.ReadFile(r.etc); string(b) != "nameserver 9.9.9.9\n" {
					t.Errorf("the image's file was written: %q", b)
				}
				return
			}
			if tt.bindErr == nil && len(bound) != 0 {
				t.Errorf("binds = %q, want none", bound)
			}
			if b, _ := os.ReadFile(r.etc); string(b) != want {
				t.Errorf("etc file = %q, want %q", b, want)
			}
		})
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConfigureNIC configures one end of a veth pair in a fresh network namespace as
// the agent configures the guest's NIC, and checks address and routes.
func TestConfigureNIC(t *testing.T) {
	if os.Getenv("SMOLVM_VM_TESTS") != "1" {
		t.Skip("needs root to make a network namespace: set SMOLVM_VM_TESTS=1")
	}
	if os.Geteuid() != 0 {
		t.Fatal("SMOLVM_VM_TESTS=1 but not root: this test makes a network namespace")
	}
	tests := []struct {
		name string
		gn   network.GuestNet
	}{
		{"tap /32, gateway outside", network.GuestNet{IP: netip.MustParsePrefix("172.16.0.7/32"),
			Gateway: netip.MustParseAddr("172.16.0.1"), DNS: netip.MustParseAddr("172.16.0.1")}},
		{"user /24, gateway inside", network.GuestNet{IP: netip.MustParsePrefix("10.0.2.15/24"),
			Gateway: netip.MustParseAddr("10.0.2.2"), DNS: netip.MustParseAddr("10.0.2.3")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runtime.LockOSThread() // the thread stays in the new namespace and dies with the goroutine
			orig, err := netns.Get()
			if err != nil {
				t.Fatal(err)
			}
			defer orig.Close()
			ns, err := netns.New()
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			defer netns.Set(orig)
			mac := network.GuestMAC(tt.gn.IP.Addr())
			hw, _ := net.ParseMAC(mac)
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: hw}, PeerName: "peer0"}
			if err := netlink.LinkAdd(veth); err != nil {
				t.Fatal(err)
			}
			if peer, err := netlink.LinkByName("peer0"); err != nil || netlink.LinkSetUp(peer) != nil {
				t.Fatalf("peer0: %v", err)
			}
			links, _ := netlink.LinkList()
			link := pickNIC(links, mac)
			if link == nil {
				t.Fatalf("link with %s not picked from %s", mac, linkNames(links))
			}
			if err := configureNIC(link, tt.gn); err != nil {
				t.Fatal(err)
			}
			if err := configureNIC(link, tt.gn); err != nil {
				t.Fatalf("second configure (idempotent): %v", err)
			}
			addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
			if len(addrs) != 1 || addrs[0].IPNet.String() != tt.gn.IP.String() {
				t.Fatalf("addresses %v, want %s", addrs, tt.gn.IP)
			}
			got, err := netlink.RouteGet(net.ParseIP("198.51.100.9"))
			if err != nil || len(got) != 1 || !got[0].Gw.Equal(net.IP(tt.gn.Gateway.AsSlice())) || got[0].LinkIndex != link.Attrs().Index {
				t.Fatalf("route to the internet: %+v %v; want via %s on eth0", got, err, tt.gn.Gateway)
			}
		})
	}
}

func TestPickRenumberNIC(t *testing.T) {
	lo := fakeLink("lo", "00:00:00:00:00:00", net.FlagLoopback)
	old := fakeLink("eth0", "06:00:ac:10:00:02", 0)     // the snapshot's identity
	other := fakeLink("eth1", "52:54:00:12:34:56", 0)   // a NIC smolvm did not configure
	renamed := fakeLink("eth2", "06:00:ac:10:00:09", 0) // already has the new MAC
	addrs := map[string][]netip.Addr{
		"eth0": {netip.MustParseAddr("172.16.0.2")},
		"eth1": {netip.MustParseAddr("192.168.1.5")},
	}
	addrsOf := func(l netlink.Link) []netip.Addr { return addrs[l.Attrs().Name] }
	newMAC, _ := net.ParseMAC("06:00:ac:10:00:09")
	tests := []struct {
		name  string
		links []netlink.Link
		want  string
	}{
		{"the new MAC already", []netlink.Link{lo, old, renamed}, "eth2"},
		{"the one carrying its smolvm address", []netlink.Link{lo, other, old}, "eth0"},
		{"the only ethernet link", []netlink.Link{lo, other}, "eth1"},
		{"two foreign links: none", []netlink.Link{lo, other, fakeLink("eth3", "52:54:00:00:00:01", 0)}, ""},
		{"loopback only", []netlink.Link{lo}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if l := pickRenumberNIC(tt.links, newMAC, addrsOf); l != nil {
				got = l.Attrs().Name
			}
			if got != tt.want {
				t.Fatalf("pickRenumberNIC = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRenumberNIC configures one end of a veth pair as a snapshot's guest
// NIC (plus a stray address and a neighbour entry for the old gateway
// MAC), renumbers it as a clone's agent does, and checks MAC, addresses,
// routes and neighbours.
func TestRenumberNIC(t *testing.T) {
	if os.Getenv("SMOLVM_VM_TESTS") != "1" {
		t.Skip("needs root to make a network namespace: set SMOLVM_VM_TESTS=1")
	}
	if os.Geteuid() != 0 {
		t.Fatal("SMOLVM_VM_TESTS=1 but not root: this test makes a network namespace")
	}
	gw := netip.MustParseAddr("172.16.0.1")
	before := network.GuestNet{IP: netip.MustParsePrefix("172.16.0.2/32"), Gateway: gw, DNS: gw}
	after := network.GuestNet{IP: netip.MustParsePrefix("172.16.0.9/32"), Gateway: gw, DNS: gw}
	newMAC, _ := net.ParseMAC(network.GuestMAC(after.IP.Addr()))
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies in its namespace
		done <- func() error {
			if _, err := netns.New(); err != nil {
				return err
			}
			return renumberVeth(t, before, after, newMAC)
		}()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func renumberVeth(t *testing.T, before, after network.GuestNet, newMAC net.HardwareAddr) error {
	oldMAC, _ := net.ParseMAC(network.GuestMAC(before.IP.Addr()))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: oldMAC}, PeerName: "peer0"}
	if err := netlink.LinkAdd(veth); err != nil {
		return err
	}
	peer, err := netlink.LinkByName("peer0")
	if err != nil || netlink.LinkSetUp(peer) != nil {
		return fmt.Errorf("peer0: %v", err)
	}
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := configureNIC(link, before); err != nil {
		return err
	}
	stray := &netlink.Addr{IPNet: prefixNet(netip.MustParsePrefix("10.9.9.9/24"))}
	if err := netlink.AddrAdd(link, stray); err != nil {
		return err
	}
	staleGW, _ := net.ParseMAC("aa:00:00:00:00:01") // the old tap's MAC
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	if link = pickRenumberNIC(links, newMAC, linkAddrs); link == nil || link.Attrs().Name != "eth0" {
		return fmt.Errorf("picked %v among %s, want eth0", link, linkNames(links))
	}
	// The first time changes the MAC (the kernel then forgets neighbours
	// itself); the second keeps it, as a clone given its origin's old
	// address would, and only renumberNIC's flush drops the stale entry.
	for i := range 2 {
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_REACHABLE, IP: net.IP(before.Gateway.AsSlice()), HardwareAddr: staleGW}); err != nil {
			return fmt.Errorf("adding neighbour: %w", err)
		}
		if err := renumberNIC(link, newMAC, after); err != nil {
			return fmt.Errorf("renumber %d: %w", i+1, err)
		}
		if link, err = netlink.LinkByName("eth0"); err != nil {
			return err
		}
		if err := checkRenumbered(link, after, newMAC, staleGW); err != nil {
			return fmt.Errorf("after renumber %d: %w", i+1, err)
		}
	}
	return nil
}

func checkRenumbered(link netlink.Link, gn network.GuestNet, mac, staleGW net.HardwareAddr) error {
	if got := link.Attrs().HardwareAddr; !bytes.Equal(got, mac) {
		return fmt.Errorf("MAC %s, want %s", got, mac)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != gn.IP.String() {
		return fmt.Errorf("addresses %v, want only %s", addrs, gn.IP)
	}
	got, err := netlink.RouteGet(net.ParseIP("198.51.100.9"))
	if err != nil || len(got) != 1 || !got[0].Gw.Equal(net.IP(gn.Gateway.AsSlice())) ||
		got[0].LinkIndex != link.Attrs().Index || !got[0].Src.Equal(net.IP(gn.IP.Addr().AsSlice())) {
		return fmt.Errorf("route to the internet: %+v %v; want via %s on eth0 from %s", got, err, gn.Gateway, gn.IP.Addr())
	}
	neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, n := range neighs {
		if bytes.Equal(n.HardwareAddr, staleGW) {
			return fmt.Errorf("the stale neighbour %s at %s is still there", n.IP, n.HardwareAddr)
		}
	}
	return nil
}
