package vmm

import (
	"bufio"
	"os"
	"strings"
)

// CPUHasVirt reports whether the first "flags" line of the cpuinfo file
// (normally /proc/cpuinfo) lists vmx or svm: hardware virtualisation. A
// /dev/kvm without it (a paravirtual KVM) cannot run QEMU or Firecracker.
func CPUHasVirt(cpuinfo string) bool {
	f, err := os.Open(cpuinfo)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, flag := range strings.Fields(v) {
			if flag == "vmx" || flag == "svm" {
				return true
			}
		}
		return false
	}
	return false
}
