package agentproto

import "strings"

// Kernel command line parameters the host sets and the agent reads.
const (
	ParamRoot     = "smolvm.root"     // root block device, e.g. /dev/vda
	ParamRootType = "smolvm.rootfs"   // root filesystem type (default ext4)
	ParamRootRO   = "smolvm.rootro"   // "1": mount the root read-only with a tmpfs overlay
	ParamHostname = "smolvm.hostname" // the guest's hostname
	ParamDebug    = "smolvm.debug"    // "1": the agent logs verbosely to the console
)

// Paths inside the initramfs that smolvm builds.
const (
	// InitramfsModuleList names the modules to load, one a line in load
	// order: the .ko path, then (after a space) the comma-separated names of
	// the listed modules it depends on, if any. The host reads the
	// dependencies from each module's .modinfo so that the guest, where
	// every instruction may be emulated, does not have to.
	InitramfsModuleList = "/etc/smolvm/modules"
)

// ParseCmdline splits a kernel command line into smolvm's parameters
// (those starting "smolvm.") as a map; other words are ignored.
func ParseCmdline(cmdline string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		if !strings.HasPrefix(f, "smolvm.") {
			continue
		}
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}
