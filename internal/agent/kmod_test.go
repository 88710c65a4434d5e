package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testModuleList is the Debian 6.1 cloud kernel's list, as the initramfs
// builder orders it.
func testModuleList() []kmodEntry {
	e := func(name string, deps ...string) kmodEntry {
		return kmodEntry{path: "/lib/modules/" + name + ".ko", name: name, deps: deps}
	}
	return []kmodEntry{
		e("virtio_ring"), e("virtio", "virtio_ring"), e("virtio_mmio", "virtio", "virtio_ring"),
		e("virtio_blk", "virtio", "virtio_ring"), e("virtio_console", "virtio", "virtio_ring"),
		e("failover"), e("net_failover", "failover"), e("virtio_net", "virtio_ring", "virtio", "net_failover"),
		e("virtio_rng", "virtio", "virtio_ring"), e("vsock"), e("vmw_vsock_virtio_transport_common", "vsock"),
		e("vmw_vsock_virtio_transport", "virtio", "vmw_vsock_virtio_transport_common", "virtio_ring", "vsock"),
		e("overlay"),
	}
}

func names(es []kmodEntry) string {
	var s []string
	for _, e := range es {
		s = append(s, e.name)
	}
	return strings.Join(s, " ")
}

func TestRootModules(t *testing.T) {
	got := strings.Join(rootModules(testModuleList()), " ")
	want := "virtio_mmio virtio_blk virtio_console virtio_net virtio_rng vmw_vsock_virtio_transport overlay"
	if got != want {
		t.Errorf("roots = %q, want %q", got, want)
	}
	for _, r := range rootModules(testModuleList()) {
		if _, driver := moduleDevices[r]; !driver && r != "virtio_mmio" && r != "overlay" {
			t.Errorf("root %s is neither a device driver nor always loaded", r)
		}
	}
}

func TestModuleClosure(t *testing.T) {
	list := testModuleList()
	tests := []struct {
		name  string
		roots []string
		done  []string
		want  string
	}{
		{"always-loaded first", []string{"virtio_mmio", "overlay"}, nil, "virtio_ring virtio virtio_mmio overlay"},
		{"drivers after the bus", []string{"virtio_blk", "virtio_console"}, []string{"virtio_ring", "virtio", "virtio_mmio", "overlay"}, "virtio_blk virtio_console"},
		{"net pulls in failover", []string{"virtio_net"}, []string{"virtio_ring", "virtio"}, "failover net_failover virtio_net"},
		{"vsock pulls in its core", []string{"vmw_vsock_virtio_transport"}, []string{"virtio_ring", "virtio"}, "vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"},
		{"nothing", nil, nil, ""},
		{"unknown root is ignored", []string{"nosuch"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := map[string]bool{}
			for _, d := range tt.done {
				done[d] = true
			}
			if got := names(moduleClosure(list, tt.roots, done)); got != tt.want {
				t.Errorf("closure = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadModuleList(t *testing.T) {
	p := filepath.Join(t.TempDir(), "modules")
	list := "/lib/modules/virtio_ring.ko\n/lib/modules/virtio.ko virtio_ring\n\n/lib/modules/net-failover.ko failover\n/lib/modules/virtio_net.ko virtio_ring,virtio,net_failover\n"
	if err := os.WriteFile(p, []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readModuleList(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []kmodEntry{
		{path: "/lib/modules/virtio_ring.ko", name: "virtio_ring"},
		{path: "/lib/modules/virtio.ko", name: "virtio", deps: []string{"virtio_ring"}},
		{path: "/lib/modules/net-failover.ko", name: "net_failover", deps: []string{"failover"}},
		{path: "/lib/modules/virtio_net.ko", name: "virtio_net", deps: []string{"virtio_ring", "virtio", "net_failover"}},
	}
	if !slices.EqualFunc(got, want, func(a, b kmodEntry) bool {
		return a.path == b.path && a.name == b.name && slices.Equal(a.deps, b.deps)
	}) {
		t.Errorf("readModuleList = %+v, want %+v", got, want)
	}
	if es, err := readModuleList(filepath.Join(t.TempDir(), "none")); err != nil || es != nil {
		t.Errorf("missing list = %v, %v; want nothing to load", es, err)
	}
}

func TestSplitRoots(t *testing.T) {
	roots := rootModules(testModuleList())
	tests := []struct {
		name            string
		params          map[string]string
		always, drivers string
	}{
		{"writable root: no overlay", nil, "virtio_mmio", "virtio_blk virtio_console virtio_net virtio_rng vmw_vsock_virtio_transport"},
		{"read-only root: overlay", map[string]string{"smolvm.rootro": "1"}, "virtio_mmio overlay", "virtio_blk virtio_console virtio_net virtio_rng vmw_vsock_virtio_transport"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			always, drivers := splitRoots(roots, tt.params)
			if got := strings.Join(always, " "); got != tt.always {
				t.Errorf("always = %q, want %q", got, tt.always)
			}
			if got := strings.Join(drivers, " "); got != tt.drivers {
				t.Errorf("drivers = %q, want %q", got, tt.drivers)
			}
		})
	}
}
