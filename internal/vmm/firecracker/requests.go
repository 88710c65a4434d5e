package firecracker

import (
	"context"
	"fmt"
	"net/http"
	"strings"
)

// request is one API call of a configuration sequence.
type request struct {
	method string
	path   string
	body   any
}

// run sends the requests build makes, in order, stopping at the first error.
func (c *client) run(ctx context.Context, build func() ([]request, error)) error {
	reqs, err := build()
	if err != nil {
		return err
	}
	for _, r := range reqs {
		if err := c.do(ctx, r.method, r.path, r.body, nil); err != nil {
			return err
		}
	}
	return nil
}

// guestCID is the guest's vsock context id (2 is the host; 3 the first guest).
const guestCID = 3

// bootArgs are appended to the spec's command line unless it sets them:
// the serial console is firecracker's stdout; a reboot (keyboard
// controller reset) or panic ends firecracker; there is no PCI bus; the
// i8042 probes that cost boot time are skipped (the keyboard stays, for
// Ctrl-Alt-Del).
var bootArgs = []string{
	"console=ttyS0", "reboot=k", "panic=-1", "pci=off",
	"i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
}

// cmdline appends bootArgs whose keys base does not set.
func cmdline(base string) string {
	words := strings.Fields(base)
	have := map[string]bool{}
	for _, w := range words {
		k, _, _ := strings.Cut(w, "=")
		have[k] = true
	}
	for _, a := range bootArgs {
		k, _, _ := strings.Cut(a, "=")
		if !have[k] {
			words = append(words, a)
		}
	}
	return strings.Join(words, " ")
}

// preludeRequests configure logging (and metrics), which must come first,
// and are the only calls allowed before a snapshot load.
func (i *Instance) preludeRequests() ([]request, error) {
	logPath, err := i.layout.create(apiLog)
	if err != nil {
		return nil, fmt.Errorf("creating firecracker log: %w", err)
	}
	reqs := []request{{http.MethodPut, "/logger", logger{LogPath: logPath, Level: "Info", ShowLevel: true}}}
	if i.opts.Metrics {
		p, err := i.layout.create(metricsFile)
		if err != nil {
			return nil, fmt.Errorf("creating metrics file: %w", err)
		}
		reqs = append(reqs, request{http.MethodPut, "/metrics", metrics{MetricsPath: p}})
	}
	return reqs, nil
}

// bootRequests configure a fresh machine from the spec and start it.
func (i *Instance) bootRequests() ([]request, error) {
	spec := i.spec
	reqs, err := i.preludeRequests()
	if err != nil {
		return nil, err
	}
	kernel, err := i.layout.file(spec.Kernel, "vmlinux", false)
	if err != nil {
		return nil, err
	}
	boot := bootSource{KernelImagePath: kernel, BootArgs: cmdline(spec.Cmdline)}
	if spec.Initrd != "" {
		if boot.InitrdPath, err = i.layout.file(spec.Initrd, "initrd", false); err != nil {
			return nil, err
		}
	}
	vcpus, mem := spec.VCPUs, spec.MemoryMiB
	if vcpus == 0 {
		vcpus = defaultVCPUs
	}
	if mem == 0 {
		mem = defaultMemoryMiB
	}
	reqs = append(reqs,
		request{http.MethodPut, "/boot-source", boot},
		request{http.MethodPut, "/machine-config", machineConfig{VCPUCount: vcpus, MemSizeMiB: mem}},
	)
	drives, err := i.driveRequests()
	if err != nil {
		return nil, err
	}
	reqs = append(reqs, drives...)
	for n, nic := range spec.Net {
		reqs = append(reqs, request{http.MethodPut, "/network-interfaces/" + ifaceID(n), networkInterface{
			IfaceID:       ifaceID(n),
			HostDevName:   nic.Tap,
			GuestMAC:      nic.MAC,
			RxRateLimiter: bandwidth(nic.RxRateBps),
			TxRateLimiter: bandwidth(nic.TxRateBps),
		}})
	}
	return append(reqs,
		request{http.MethodPut, "/vsock", vsock{GuestCID: guestCID, UDSPath: i.layout.vmmPath(vsockSocket)}},
		request{http.MethodPut, "/actions", action{ActionType: actionInstanceStart}},
	), nil
}

// driveRequests attach the spec's disks in order (vda, vdb, ...). None is
// firecracker's root device: the agent in the initramfs mounts /dev/vda
// itself, and a root device would add root= to the command line and move
// that drive to the front.
func (i *Instance) driveRequests() ([]request, error) {
	var reqs []request
	for n, d := range i.spec.Disks {
		id := driveID(n)
		p, err := i.layout.stable(d.Path, id, !d.ReadOnly)
		if err != nil {
			return nil, err
		}
		reqs = append(reqs, request{http.MethodPut, "/drives/" + id, drive{
			DriveID:    id,
			PathOnHost: p,
			IsReadOnly: d.ReadOnly,
		}})
	}
	return reqs, nil
}

func driveID(n int) string { return fmt.Sprintf("disk%d", n) }
func ifaceID(n int) string { return fmt.Sprintf("eth%d", n) }
