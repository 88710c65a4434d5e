package agent

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one entry of a mount table.
type Mount struct {
	Source   string
	Target   string
	FSType   string
	Flags    uintptr
	Data     string
	Optional bool // a failure is logged, not fatal
}

// String is the mount's log line, in mount(8)'s words.
func (m Mount) String() string {
	opts := mountFlagNames(m.Flags)
	if m.Data != "" {
		opts = append(opts, m.Data)
	}
	s := fmt.Sprintf("%s on %s type %s", m.Source, m.Target, m.FSType)
	if len(opts) > 0 {
		s += " (" + strings.Join(opts, ",") + ")"
	}
	return s
}

func mountFlagNames(f uintptr) []string {
	names := []struct {
		bit  uintptr
		name string
	}{
		{unix.MS_RDONLY, "ro"}, {unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"},
		{unix.MS_NOEXEC, "noexec"}, {unix.MS_RELATIME, "relatime"}, {unix.MS_MOVE, "move"},
	}
	var out []string
	for _, n := range names {
		if f&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// mount creates the mount point if missing and mounts m.
func (m Mount) mount() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("mounting %s: creating mount point: %w", m, err)
	}
	if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil {
		return fmt.Errorf("mounting %s: %w", m, err)
	}
	return nil
}

const (
	mntSecure = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	mntTmp    = unix.MS_NOSUID | unix.MS_NODEV
)

// earlyMounts are mounted in the initramfs, before the root disk.
func earlyMounts() []Mount {
	return []Mount{
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: mntSecure},
		{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: mntSecure},
		{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
	}
}

// movedMounts are the early mounts carried over into the new root.
var movedMounts = []string{"/dev", "/proc", "/sys"}

// rootMounts are mounted inside the root disk once it is /. Those already
// mounted (moved from the initramfs) are skipped.
func rootMounts() []Mount {
	return []Mount{
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: mntSecure},
		{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: mntSecure},
		{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
		{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{Source: "shm", Target: "/dev/shm", FSType: "tmpfs", Flags: mntTmp, Data: "mode=1777"},
		{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: mntTmp, Data: "mode=0755"},
		{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs", Flags: mntTmp, Data: "mode=1777"},
		{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2", Flags: mntSecure, Optional: true},
	}
}

// devLinks are the /dev symlinks that udev would make.
var devLinks = [][2]string{
	{"/dev/fd", "/proc/self/fd"},
	{"/dev/stdin", "/proc/self/fd/0"},
	{"/dev/stdout", "/proc/self/fd/1"},
	{"/dev/stderr", "/proc/self/fd/2"},
}

// isMountPoint says whether path is the root of a mount (its device
// differs from its parent's, or it is /).
func isMountPoint(path string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(path, &st) != nil || unix.Stat(path+"/..", &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino
}
