package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/vmm"
)

// The tail every x86 command line ends with: agent port and QMP monitor.
const channelsTail = "-chardev socket,id=agent,fd=4,server=on,wait=off " +
	"-device virtio-serial-device " +
	"-device virtserialport,chardev=agent,name=smolvm.agent " +
	"-chardev socket,id=qmp,fd=3,server=on,wait=off " +
	"-mon chardev=qmp,mode=control"

func TestArgs(t *testing.T) {
	base := vmm.Spec{ID: "vm1", Dir: "/run/s/vm1", Kernel: "/k/vmlinuz", VCPUs: 2, MemoryMiB: 256}
	tcg := launchConfig{machine: machineX86, accel: "tcg", tscKHz: 2596138}
	tests := []struct {
		name string
		spec func(vmm.Spec) vmm.Spec
		cfg  launchConfig
		want string
	}{{
		name: "tcg minimal",
		spec: func(s vmm.Spec) vmm.Spec { return s },
		cfg:  tcg,
		want: "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on -accel tcg -cpu max,erms=off,fsrm=off -m 256 -smp 2 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz " +
			"-append console=ttyS0 panic=-1 reboot=t tsc_early_khz=2596138 -serial null " + channelsTail,
	}, {
		name: "kvm with initrd, console, disks",
		spec: func(s vmm.Spec) vmm.Spec {
			s.Initrd = "/k/initrd"
			s.Cmdline = "smolvm.root=/dev/vda quiet"
			s.ConsoleLog = "/run/s/vm1/console.log"
			s.Disks = []vmm.Disk{
				{Path: "/img/base.qcow2", ReadOnly: true, Format: "qcow2"},
				{Path: "/img/data.raw"},
			}
			return s
		},
		cfg: launchConfig{machine: machineX86, accel: "kvm", tscKHz: 2596138},
		want: "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on -accel kvm -cpu host -m 256 -smp 2 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz -initrd /k/initrd " +
			"-append smolvm.root=/dev/vda quiet console=ttyS0 panic=-1 reboot=t " +
			"-chardev file,id=console,path=/run/s/vm1/console.log,append=on -serial chardev:console " +
			"-drive if=none,id=d0,file=/img/base.qcow2,format=qcow2,readonly=on,cache=writeback,discard=unmap " +
			"-device virtio-blk-device,drive=d0 " +
			"-drive if=none,id=d1,file=/img/data.raw,format=raw,readonly=off,cache=writeback,discard=unmap " +
			"-device virtio-blk-device,drive=d1 " + channelsTail,
	}, {
		name: "zero sizes take defaults, commas in paths doubled",
		spec: func(s vmm.Spec) vmm.Spec {
			s.VCPUs, s.MemoryMiB = 0, 0
			s.ConsoleLog = "/tmp/a,b/console.log"
			s.Disks = []vmm.Disk{{Path: "/img/x,y.raw", Format: "raw"}}
			return s
		},
		cfg: tcg,
		want: "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on -accel tcg -cpu max,erms=off,fsrm=off -m 512 -smp 1 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz " +
			"-append console=ttyS0 panic=-1 reboot=t tsc_early_khz=2596138 " +
			"-chardev file,id=console,path=/tmp/a,,b/console.log,append=on -serial chardev:console " +
			"-drive if=none,id=d0,file=/img/x,,y.raw,format=raw,readonly=off,cache=writeback,discard=unmap " +
			"-device virtio-blk-device,drive=d0 " + channelsTail,
	}, {
		name: "caller's console and panic win; unknown tsc left out",
		spec: func(s vmm.Spec) vmm.Spec { s.Cmdline = "console=hvc0 panic=5"; return s },
		cfg:  launchConfig{machine: machineX86, accel: "tcg"},
		want: "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on -accel tcg -cpu max,erms=off,fsrm=off -m 256 -smp 2 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz " +
			"-append console=hvc0 panic=5 reboot=t -serial null " + channelsTail,
	}, {
		name: "tcg single-threaded with the default cpu model",
		spec: func(s vmm.Spec) vmm.Spec { return s },
		cfg:  launchConfig{machine: machineX86, accel: "tcg", tcgCPU: "qemu64", tcgThread: "single", tscKHz: 1000000},
		want: "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on -accel tcg,thread=single -cpu qemu64 -m 256 -smp 2 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz " +
			"-append console=ttyS0 panic=-1 reboot=t tsc_early_khz=1000000 -serial null " + channelsTail,
	}, {
		name: "user-mode network",
		spec: func(s vmm.Spec) vmm.Spec {
			s.Net = []vmm.NetIf{{Mode: "user", MAC: "06:00:0a:00:02:0f"}}
			return s
		},
		cfg: tcg,
		want: "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on -accel tcg -cpu max,erms=off,fsrm=off -m 256 -smp 2 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz " +
			"-append console=ttyS0 panic=-1 reboot=t tsc_early_khz=2596138 -serial null " +
			"-netdev user,id=n0 -device virtio-net-device,netdev=n0,mac=06:00:0a:00:02:0f " + channelsTail,
	}, {
		name: "tap network after disks, second nic without mac",
		spec: func(s vmm.Spec) vmm.Spec {
			s.Disks = []vmm.Disk{{Path: "/img/a.raw"}}
			s.Net = []vmm.NetIf{
				{Mode: "tap", Tap: "smolvm-0a1b2c3d", MAC: "06:00:ac:10:00:02"},
				{Mode: "user"},
			}
			return s
		},
		cfg: tcg,
		want: "-M microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on -accel tcg -cpu max,erms=off,fsrm=off -m 256 -smp 2 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz " +
			"-append console=ttyS0 panic=-1 reboot=t tsc_early_khz=2596138 -serial null " +
			"-drive if=none,id=d0,file=/img/a.raw,format=raw,readonly=off,cache=writeback,discard=unmap " +
			"-device virtio-blk-device,drive=d0 " +
			"-netdev tap,id=n0,ifname=smolvm-0a1b2c3d,script=no,downscript=no " +
			"-device virtio-net-device,netdev=n0,mac=06:00:ac:10:00:02 " +
			"-netdev user,id=n1 -device virtio-net-device,netdev=n1 " + channelsTail,
	}, {
		name: "arm64 virt",
		spec: func(s vmm.Spec) vmm.Spec { return s },
		cfg:  launchConfig{machine: machineARM64, accel: "tcg"},
		want: "-M virt,gic-version=max -accel tcg -cpu max -m 256 -smp 2 " +
			"-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz " +
			"-append console=ttyAMA0 panic=-1 reboot=t -serial null " + channelsTail,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.spec(base)
			if err := validate(spec); err != nil {
				t.Fatalf("validate: %v", err)
			}
			got := args(spec, tt.cfg)
			// Compare word by word; -append's value is one word with spaces.
			want := splitWant(tt.want)
			if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
				t.Errorf("args mismatch\n got: %q\nwant: %q", got, want)
			}
		})
	}
}

// splitWant splits a wanted command line on spaces, keeping the value after
// -append (up to the next word starting with "-") as one word.
func splitWant(s string) []string {
	var out []string
	words := strings.Fields(s)
	for i := 0; i < len(words); i++ {
		if words[i] != "-append" {
			out = append(out, words[i])
			continue
		}
		j := i + 1
		for j < len(words) && !strings.HasPrefix(words[j], "-") {
			j++
		}
		out = append(out, "-append", strings.Join(words[i+1:j], " "))
		i = j - 1
	}
	return out
}

func TestValidate(t *testing.T) {
	ok := vmm.Spec{Dir: "/d", Kernel: "/k"}
	tests := []struct {
		name    string
		mut     func(*vmm.Spec)
		wantErr string
	}{
		{"ok", func(*vmm.Spec) {}, ""},
		{"no dir", func(s *vmm.Spec) { s.Dir = "" }, "no run directory"},
		{"no kernel", func(s *vmm.Spec) { s.Kernel = "" }, "no kernel"},
		{"negative vcpus", func(s *vmm.Spec) { s.VCPUs = -1 }, "vcpus must be positive"},
		{"negative memory", func(s *vmm.Spec) { s.MemoryMiB = -5 }, "memory must be positive"},
		{"disk without path", func(s *vmm.Spec) { s.Disks = []vmm.Disk{{}} }, "disk 0 has no path"},
		{"bad format", func(s *vmm.Spec) { s.Disks = []vmm.Disk{{Path: "/x", Format: "vmdk"}} }, `disk /x: unknown disk format "vmdk"`},
		{"user net", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "user"}} }, ""},
		{"tap net", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "tap", Tap: "smolvm-1", MAC: "06:00:ac:10:00:02"}} }, ""},
		{"unknown net mode", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "bridge"}} }, `network interface 0: unknown mode "bridge"`},
		{"tap without name", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "tap"}} }, `tap name ""`},
		{"tap name with comma", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "tap", Tap: "a,script=/x"}} }, "no comma"},
		{"tap name too long", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "tap", Tap: "smolvm-0123456789"}} }, "1-15 characters"},
		{"bad mac", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "user", MAC: "06:00,x"}} }, "mac address"},
		{"rate limit", func(s *vmm.Spec) { s.Net = []vmm.NetIf{{Mode: "user", RxRateBps: 1}} }, "no per-interface rate limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.mut(&s)
			err := validate(s)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestHostTSCKHz(t *testing.T) {
	tests := []struct {
		name    string
		sysfs   string // tsc_freq_khz content, "" for absent
		cpuinfo string // "" for absent
		want    int
	}{
		{"sysfs wins", "2100000\n", "cpu MHz\t\t: 2596.138\n", 2100000},
		{"cpuinfo MHz", "", "processor\t: 0\ncpu MHz\t\t: 2596.138\nflags\t\t: fpu\n", 2596138},
		{"garbage sysfs falls back", "x\n", "cpu MHz\t\t: 1000.000\n", 1000000},
		{"nothing", "", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.sysfs != "" {
				writeFile(t, filepath.Join(root, "sys/devices/system/cpu/cpu0/tsc_freq_khz"), tt.sysfs)
			}
			if tt.cpuinfo != "" {
				writeFile(t, filepath.Join(root, "proc/cpuinfo"), tt.cpuinfo)
			}
			if got := hostTSCKHz(root); got != tt.want {
				t.Errorf("hostTSCKHz = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestAccelDetection(t *testing.T) {
	tests := []struct {
		name    string
		device  bool   // a read-write device file exists
		flags   string // cpuinfo flags
		want    string
		wantArm string
	}{
		{"kvm with vmx", true, "fpu vmx sse", "kvm", "kvm"},
		{"kvm with svm", true, "fpu svm", "kvm", "kvm"},
		{"paravirtual kvm without vmx/svm", true, "fpu sse hypervisor", "tcg", "kvm"},
		{"no device", false, "fpu vmx", "tcg", "tcg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeFile(t, filepath.Join(root, "proc/cpuinfo"), "processor\t: 0\nflags\t\t: "+tt.flags+"\n")
			dev := filepath.Join(root, "kvm")
			if tt.device {
				writeFile(t, dev, "")
			}
			b := New(Options{})
			b.kvmDevice, b.procRoot = dev, root
			want := tt.want
			if b.machine.binary == machineARM64.binary {
				want = tt.wantArm
			}
			if got := b.Accel(); got != want {
				t.Errorf("Accel() = %q, want %q", got, want)
			}
			if forced := New(Options{Accel: "tcg"}).Accel(); forced != "tcg" {
				t.Errorf("forced Accel() = %q, want tcg", forced)
			}
		})
	}
}

func TestLastError(t *testing.T) {
	tests := []struct {
		name, log, want string
	}{
		{"drive option echo stripped",
			"qemu-system-x86_64: -drive if=none,id=d0,file=/nope.img,format=raw: Could not open '/nope.img': No such file or directory\n",
			"Could not open '/nope.img': No such file or directory"},
		{"last line wins",
			"qemu-system-x86_64: warning: host doesn't support requested feature\nqemu-system-x86_64: could not load kernel '/k': No such file or directory\n",
			"could not load kernel '/k': No such file or directory"},
		{"plain line kept", "something odd\n", "something odd"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "qemu.log")
			writeFile(t, p, tt.log)
			if got := lastError(p); got != tt.want {
				t.Errorf("lastError = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSocketPathTooLong(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("x", 110))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cannot make a long directory here: %v", err)
	}
	b := New(Options{Binary: "/bin/true"})
	_, err := b.Launch(t.Context(), vmm.Spec{ID: "long", Dir: dir, Kernel: "/k"})
	if err == nil || !strings.Contains(err.Error(), "over the limit of 107") {
		t.Fatalf("Launch = %v, want a socket path length error", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("Launch left %d files in %s", len(entries), dir)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
