package backends

import "context"

// BackendStatus is one backend's standing on this host, for `smolvm doctor`.
type BackendStatus struct {
	Name     string `json:"name"`
	Usable   bool   `json:"usable"`
	Accel    string `json:"accel,omitempty"`    // "kvm" or "tcg", when usable
	Problem  string `json:"problem,omitempty"`  // why it cannot run; "" when usable
	Install  string `json:"install,omitempty"`  // what to install or do to make it (faster and) usable
	Selected bool   `json:"selected,omitempty"` // Select would choose it
	Why      string `json:"why,omitempty"`      // for the selected one: Select's reason
	Warning  string `json:"warning,omitempty"`  // for the selected one: Select's warning
}

// installHints say how to make each backend usable.
var installHints = map[string]string{
	"firecracker": "needs /dev/kvm (hardware virtualisation, or nested virtualisation on a cloud VM; user in the kvm group) and the firecracker binary: download a Firecracker release (firecracker-microvm/firecracker on GitHub) and put firecracker (and jailer) on PATH",
	"qemu":        "apt-get install qemu-system-x86 (qemu-system-arm on arm64)",
}

// kvmHint is shown for a QEMU that works but only under TCG.
const kvmHint = "for KVM speed: enable hardware virtualisation (VT-x/AMD-V; nested virtualisation on a cloud VM) and give this user read-write access to /dev/kvm"

// Report checks every backend and says which Select would choose, why, and
// what to install for the others. env is as for Select ($SMOLVM_BACKEND
// counts).
func Report(ctx context.Context, env func(string) string, opts Options) []BackendStatus {
	_, chosen, selErr := Select(ctx, "", env, opts)
	var out []BackendStatus
	for _, name := range Names() {
		p := probeBackend(ctx, name, opts)
		st := BackendStatus{Name: name, Usable: p.err == nil}
		if p.err != nil {
			st.Problem = p.err.Error()
			st.Install = installHints[name]
		} else {
			st.Accel = p.accel
			if p.accel == "tcg" {
				st.Install = kvmHint
			}
		}
		if selErr == nil && chosen.Backend == name {
			st.Selected, st.Why, st.Warning = true, chosen.Why, chosen.Warning
		}
		out = append(out, st)
	}
	return out
}
