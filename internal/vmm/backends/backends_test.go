package backends

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmm/firecracker"
	"github.com/smolvm/smolvm/internal/vmm/qemu"
)

// host describes a pretend host for decide: which backends pass Check and
// QEMU's acceleration.
type host struct {
	fcOK, qemuOK bool
	qemuAccel    string
}

// fakeBackend stands for a constructed backend; decide only passes it on.
type fakeBackend struct{ name string }

func (f fakeBackend) Name() string                { return f.name }
func (f fakeBackend) Check(context.Context) error { return nil }
func (f fakeBackend) Launch(context.Context, vmm.Spec) (vmm.Instance, error) {
	return nil, errors.ErrUnsupported
}

func (h host) probe(probed *[]string) func(string) probe {
	return func(name string) probe {
		*probed = append(*probed, name)
		unavailable := fmt.Errorf("%w: %s missing", vmm.ErrUnavailable, name)
		switch name {
		case "firecracker":
			if h.fcOK {
				return probe{backend: fakeBackend{name}, accel: "kvm"}
			}
			return probe{backend: fakeBackend{name}, err: unavailable}
		case "qemu":
			if h.qemuOK {
				return probe{backend: fakeBackend{name}, accel: h.qemuAccel}
			}
			return probe{backend: fakeBackend{name}, err: unavailable}
		}
		_, err := New(name, Options{})
		return probe{err: err}
	}
}

func TestDecide(t *testing.T) {
	kvmHost := host{fcOK: true, qemuOK: true, qemuAccel: "kvm"}
	qemuKVM := host{qemuOK: true, qemuAccel: "kvm"}
	tcgHost := host{qemuOK: true, qemuAccel: "tcg"}
	cases := []struct {
		name          string
		h             host
		explicit, env string
		want, source  string
		accel         string
		warn          bool
		wantErr       string
		probedOnly    []string
	}{
		{"auto prefers firecracker", kvmHost, "", "", "firecracker", "auto", "kvm", false, "", []string{"firecracker"}},
		{"auto qemu kvm", qemuKVM, "", "", "qemu", "auto", "kvm", false, "", []string{"firecracker", "qemu"}},
		{"auto qemu tcg warns", tcgHost, "", "", "qemu", "auto", "tcg", true, "", nil},
		{"nothing usable", host{}, "", "", "", "", "", false, "no backend can run here", nil},
		{"flag", kvmHost, "qemu", "", "qemu", "flag", "kvm", false, "", []string{"qemu"}},
		{"flag beats env", kvmHost, "qemu", "firecracker", "qemu", "flag", "kvm", false, "", []string{"qemu"}},
		{"env", kvmHost, "", "QEMU", "qemu", "env", "kvm", false, "", nil},
		{"flag tcg warns", tcgHost, "qemu", "", "qemu", "flag", "tcg", true, "", nil},
		{"flag unusable is an error", tcgHost, "firecracker", "", "", "", "", false, "backend firecracker from --backend firecracker cannot run here", []string{"firecracker"}},
		{"env unusable is an error", tcgHost, "", "firecracker", "", "", "", false, "from SMOLVM_BACKEND=firecracker cannot run here", nil},
		{"unknown name", kvmHost, "xen", "", "", "", "", false, `unknown backend "xen" (want one of firecracker, qemu)`, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var probed []string
			b, r, err := decide(c.explicit, c.env, c.h.probe(&probed))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Name() != c.want || r.Backend != c.want || r.Source != c.source || r.Accel != c.accel {
				t.Errorf("chose %s, reason %+v; want %s from %s with %s", b.Name(), r, c.want, c.source, c.accel)
			}
			if (r.Warning != "") != c.warn {
				t.Errorf("warning %q, want one: %v", r.Warning, c.warn)
			}
			if r.Why == "" {
				t.Error("no reason given")
			}
			if c.probedOnly != nil && !slices.Equal(probed, c.probedOnly) {
				t.Errorf("probed %v, want %v", probed, c.probedOnly)
			}
		})
	}
}

func TestNew(t *testing.T) {
	for _, name := range Names() {
		b, err := New(name, Options{})
		if err != nil || b.Name() != name {
			t.Errorf("New(%q) = %v, %v", name, b, err)
		}
	}
	if _, err := New("vmware", Options{}); !errors.Is(err, ErrUnknown) {
		t.Errorf("New(vmware) = %v, want ErrUnknown", err)
	}
	if got := Names(); !slices.Equal(got, []string{"firecracker", "qemu"}) {
		t.Errorf("Names() = %v", got)
	}
	if _, ok := mustNew(t, "firecracker").(vmm.Restorer); !ok {
		t.Error("firecracker backend is not a vmm.Restorer")
	}
}

func mustNew(t *testing.T, name string) vmm.Backend {
	b, err := New(name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSelectHere runs the real checks on this host with a firecracker that
// cannot be found: QEMU must be chosen, with its own idea of acceleration.
func TestSelectHere(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	opts := Options{Firecracker: firecracker.Options{Binary: "/nonexistent/firecracker"}}
	noEnv := func(string) string { return "" }
	b, r, err := Select(context.Background(), "", noEnv, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("selected: %s", r)
	wantAccel := qemu.New(qemu.Options{}).Accel()
	if b.Name() != "qemu" || r.Accel != wantAccel || (wantAccel == "tcg") != (r.Warning != "") {
		t.Errorf("Select = %s %+v, want qemu with %s", b.Name(), r, wantAccel)
	}
	if !strings.Contains(r.Why, "firecracker") {
		t.Errorf("reason %q does not say why not firecracker", r.Why)
	}

	_, _, err = Select(context.Background(), "firecracker", noEnv, opts)
	if !errors.Is(err, vmm.ErrUnavailable) {
		t.Errorf("Select(firecracker) without its binary = %v, want ErrUnavailable", err)
	}

	rep := Report(context.Background(), noEnv, opts)
	if len(rep) != 2 {
		t.Fatalf("Report has %d entries", len(rep))
	}
	for _, st := range rep {
		t.Logf("%+v", st)
		switch st.Name {
		case "firecracker":
			if st.Usable || st.Selected || st.Problem == "" || !strings.Contains(st.Install, "firecracker") {
				t.Errorf("firecracker status %+v", st)
			}
		case "qemu":
			if !st.Usable || !st.Selected || st.Accel != wantAccel || st.Why != r.Why {
				t.Errorf("qemu status %+v", st)
			}
		}
	}
}
