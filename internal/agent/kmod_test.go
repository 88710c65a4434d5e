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

func TestModuleDepends(t *testing.T) {
	tests := []struct {
		data string
		want []string
	}{
		{"\x7fELF...\x00license=GPL\x00depends=virtio,virtio_ring\x00intree=Y\x00", []string{"virtio", "virtio_ring"}},
		{"\x00depends=\x00name=x\x00", nil},
		{"\x00depends=net-failover", []string{"net_failover"}},
		{"no modinfo here", nil},
	}
	for _, tt := range tests {
		if got := moduleDepends([]byte(tt.data)); !slices.Equal(got, tt.want) {
			t.Errorf("moduleDepends(%q) = %q, want %q", tt.data, got, tt.want)
		}
	}
}

// TestModuleDependsRealModule checks the byte scan against a real module
// of the guest kernel, when it is installed.
func TestModuleDependsRealModule(t *testing.T) {
	p := filepath.Join(vmModules, "kernel/drivers/net/virtio_net.ko")
	data, err := os.ReadFile(p)
	if err != nil {
		if os.Getenv("SMOLVM_VM_TESTS") == "1" {
			t.Fatal(err)
		}
		t.Skipf("needs the guest kernel's modules: %v", err)
	}
	got := moduleDepends(data)
	slices.Sort(got)
	if want := []string{"net_failover", "virtio", "virtio_ring"}; !slices.Equal(got, want) {
		t.Errorf("depends = %q, want %q", got, want)
	}
}
