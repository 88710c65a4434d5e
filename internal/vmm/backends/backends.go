// Package backends names the VMM backends, constructs them, and picks the
// one a VM should use on this host, saying why.
package backends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmm/firecracker"
	"github.com/smolvm/smolvm/internal/vmm/qemu"
)

// EnvVar names the backend to use when no --backend is given.
const EnvVar = "SMOLVM_BACKEND"

// Options configure every backend New and Select can make.
type Options struct {
	Firecracker firecracker.Options
	QEMU        qemu.Options
}

// constructors are all the backends there are, by the name users type.
var constructors = map[string]func(Options) vmm.Backend{
	"firecracker": func(o Options) vmm.Backend { return firecracker.New(o.Firecracker) },
	"qemu":        func(o Options) vmm.Backend { return qemu.New(o.QEMU) },
}

// preference is the automatic choice's order.
var preference = []string{"firecracker", "qemu"}

// ErrUnknown is returned for a backend name that does not exist.
var ErrUnknown = errors.New("unknown backend")

// Names lists the backends' names, sorted.
func Names() []string {
	names := make([]string, 0, len(constructors))
	for n := range constructors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// New constructs the backend called name (as recorded for an existing VM),
// without checking that it can run.
func New(name string, opts Options) (vmm.Backend, error) {
	mk, ok := constructors[strings.ToLower(strings.TrimSpace(name))]
	if !ok {
		return nil, fmt.Errorf("%w %q (want one of %s)", ErrUnknown, name, strings.Join(Names(), ", "))
	}
	return mk(opts), nil
}

// Reason says which backend Select chose and why.
type Reason struct {
	Backend string // "firecracker" or "qemu"
	Accel   string // "kvm" or "tcg"
	Source  string // "flag" (--backend), "env" (SMOLVM_BACKEND) or "auto"
	Why     string // one sentence
	Warning string // one line to show the user, or ""
}

func (r Reason) String() string {
	s := fmt.Sprintf("%s (%s): %s", r.Backend, r.Accel, r.Why)
	if r.Warning != "" {
		s += "; warning: " + r.Warning
	}
	return s
}

// tcgWarning is shown whenever QEMU must emulate the CPU.
const tcgWarning = "no usable KVM: QEMU emulates the CPU in software (TCG), so VMs boot and run several times slower"

// accelerator is implemented by backends that know their acceleration
// before launching (QEMU: KVM or TCG).
type accelerator interface{ Accel() string }

// probe is what Select learns about one backend.
type probe struct {
	backend vmm.Backend
	err     error  // Check's verdict
	accel   string // when usable
}

func probeBackend(ctx context.Context, name string, opts Options) probe {
	b, err := New(name, opts)
	if err != nil {
		return probe{err: err}
	}
	p := probe{backend: b, err: b.Check(ctx), accel: "kvm"}
	if a, ok := b.(accelerator); ok {
		p.accel = a.Accel()
	}
	return p
}

// Select picks the backend for a new VM: explicit (--backend) if given,
// else $SMOLVM_BACKEND, else firecracker when /dev/kvm is usable and the
// binary is found, else QEMU (with KVM when it can, else TCG, with a
// warning that it is slow). A backend asked for by name that cannot run is
// an error, not a fallback. env reads the environment (nil: os.Getenv).
func Select(ctx context.Context, explicit string, env func(string) string, opts Options) (vmm.Backend, Reason, error) {
	if env == nil {
		env = os.Getenv
	}
	probe := func(name string) probe { return probeBackend(ctx, name, opts) }
	return decide(explicit, env(EnvVar), probe)
}

// decide is Select's logic over probe results.
func decide(explicit, fromEnv string, probe func(string) probe) (vmm.Backend, Reason, error) {
	if name, source := requested(explicit, fromEnv); name != "" {
		p := probe(name)
		if p.backend == nil {
			return nil, Reason{}, fmt.Errorf("backend from %s: %w", sourceText(source, name), p.err)
		}
		if p.err != nil {
			return nil, Reason{}, fmt.Errorf("backend %s from %s cannot run here: %w", name, sourceText(source, name), p.err)
		}
		r := Reason{Backend: name, Accel: p.accel, Source: source, Why: "asked for by " + sourceText(source, name)}
		if p.accel == "tcg" {
			r.Warning = tcgWarning
		}
		return p.backend, r, nil
	}
	var why []string
	for _, name := range preference {
		p := probe(name)
		if p.err != nil {
			why = append(why, fmt.Sprintf("%s: %v", name, p.err))
			continue
		}
		r := Reason{Backend: name, Accel: p.accel, Source: "auto"}
		switch {
		case name == "firecracker":
			r.Why = "/dev/kvm is usable and the firecracker binary was found"
		case p.accel == "kvm":
			r.Why = "QEMU with KVM (" + strings.Join(why, "; ") + ")"
		default:
			r.Why = "QEMU with TCG (" + strings.Join(why, "; ") + ")"
			r.Warning = tcgWarning
		}
		return p.backend, r, nil
	}
	return nil, Reason{}, fmt.Errorf("%w: no backend can run here: %s", vmm.ErrUnavailable, strings.Join(why, "; "))
}

// requested returns the backend named by flag or environment, and where.
func requested(explicit, fromEnv string) (name, source string) {
	if s := strings.ToLower(strings.TrimSpace(explicit)); s != "" {
		return s, "flag"
	}
	if s := strings.ToLower(strings.TrimSpace(fromEnv)); s != "" {
		return s, "env"
	}
	return "", ""
}

func sourceText(source, name string) string {
	if source == "env" {
		return EnvVar + "=" + name
	}
	return "--backend " + name
}
