package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// rootWait bounds the wait for the root disk's device node.
const rootWait = 20 * time.Second

// boot is PID 1's state during start-up.
type boot struct {
	log     *slog.Logger
	level   slog.LevelVar
	start   time.Duration // uptime when Main started
	reaper  *Reaper
	cmdline string

	root     string // root block device
	rootType string // its filesystem type
	rootRO   bool   // read-only root under a tmpfs overlay
	hostname string
}

// phase is one step of start-up: it returns a short summary for the log.
type phase struct {
	name string
	run  func() (string, error)
}

// Main is the guest agent's entry point when it runs as PID 1 from the
// initramfs. It never returns: it prepares the machine (modules, root disk,
// mounts, hostname, loopback), then serves the host forever; on a fatal
// error it logs to the console, syncs and powers the machine off.
func Main() {
	b := &boot{start: uptime()}
	b.log = slog.New(newConsoleHandler(os.Stderr, &b.level))
	catchPID1Signals(b.log, func() { b.powerOff("ctrl-alt-del") })
	b.reaper = NewReaper(true) // before anything forks
	for _, p := range b.phases() {
		t0 := uptime()
		summary, err := p.run()
		if err != nil {
			b.fatal(fmt.Errorf("%s: %w", p.name, err))
		}
		b.log.Info(summary, "took", (uptime() - t0).Round(10*time.Microsecond))
	}
	hello := agentproto.Hello{
		Version:    agentproto.Version,
		Kernel:     kernelRelease(),
		Hostname:   b.hostname,
		BootMillis: b.start.Milliseconds(),
		ReadyMs:    uptime().Milliseconds(),
	}
	b.serveForever(Config{
		Hello:    hello,
		Logger:   b.log,
		Reaper:   b.reaper,
		Root:     "/",
		Hostname: b.hostname,
		PowerOff: func() { b.powerOff("requested by host") },
		State:    NewState(), // env, background processes, ssh host key: kept across host connections
	})
}

func (b *boot) phases() []phase {
	return []phase{
		{"mounting /proc /sys /dev", b.mountEarly},
		{"reading kernel command line", b.readCmdline},
		{"loading kernel modules", b.loadModules},
		{"waiting for root device", b.waitRoot},
		{"mounting root", b.mountRoot},
		{"switching root", b.switchRoot},
		{"mounting filesystems", b.mountRootFilesystems},
		{"setting hostname", b.setHostname},
		{"bringing up loopback", bringUpLoopback},
		{"configuring network", b.setupNetwork},
	}
}

func (b *boot) mountEarly() (string, error) {
	for _, m := range earlyMounts() {
		if isMountPoint(m.Target) {
			continue
		}
		if err := m.mount(); err != nil {
			return "", err
		}
		b.log.Debug("mounted " + m.String())
	}
	return "mounted /proc /sys /dev", nil
}

func (b *boot) readCmdline() (string, error) {
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", err
	}
	b.cmdline = strings.TrimSpace(string(raw))
	p := agentproto.ParseCmdline(b.cmdline)
	b.root = orDefault(p[agentproto.ParamRoot], "/dev/vda")
	b.rootType = orDefault(p[agentproto.ParamRootType], "ext4")
	b.rootRO = p[agentproto.ParamRootRO] == "1"
	b.hostname = orDefault(p[agentproto.ParamHostname], "smolvm")
	if p[agentproto.ParamDebug] == "1" {
		b.level.Set(slog.LevelDebug)
	}
	b.log.Debug("kernel command line", "cmdline", b.cmdline)
	return fmt.Sprintf("agent started at %.3fs: root=%s type=%s ro=%v hostname=%s",
		b.start.Seconds(), b.root, b.rootType, b.rootRO, b.hostname), nil
}

// orDefault returns s, or def when s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (b *boot) loadModules() (string, error) {
	n, err := loadModules(b.log, agentproto.InitramfsModuleList, b.cmdline, "/sys")
	if err != nil {
		return "", err
	}
	// Their files are no longer needed: give the memory back.
	os.RemoveAll("/lib/modules")
	return fmt.Sprintf("loaded %d kernel modules", n), nil
}

func (b *boot) waitRoot() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rootWait)
	defer cancel()
	for {
		if _, err := os.Stat(b.root); err == nil {
			return "root device " + b.root + " is present", nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("root device %s did not appear within %v (is a disk attached, and its driver built in or loaded?)", b.root, rootWait)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// mountRoot mounts the root disk at /newroot: directly, or read-only
// under a tmpfs-backed overlay when rootro=1.
func (b *boot) mountRoot() (string, error) {
	if !b.rootRO {
		m := Mount{Source: b.root, Target: "/newroot", FSType: b.rootType}
		if err := m.mount(); err != nil {
			return "", err
		}
		return "mounted " + m.String(), nil
	}
	const lower, rw = "/run/smolvm/lower", "/run/smolvm/rw"
	ms := []Mount{
		{Source: b.root, Target: lower, FSType: b.rootType, Flags: unix.MS_RDONLY},
		{Source: "tmpfs", Target: rw, FSType: "tmpfs", Data: "mode=0755"},
	}
	for _, m := range ms {
		if err := m.mount(); err != nil {
			return "", err
		}
		b.log.Debug("mounted " + m.String())
	}
	for _, d := range []string{rw + "/upper", rw + "/work"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
	}
	ov := Mount{Source: "overlay", Target: "/newroot", FSType: "overlay",
		Data: "lowerdir=" + lower + ",upperdir=" + rw + "/upper,workdir=" + rw + "/work"}
	if err := ov.mount(); err != nil {
		return "", err
	}
	return "mounted " + b.root + " read-only under a tmpfs overlay on /newroot", nil
}

// switchRoot makes /newroot the root: it moves /dev, /proc and /sys into
// it, moves it over / and chroots. (The initramfs is rootfs, which cannot
// be pivoted away from.)
func (b *boot) switchRoot() (string, error) {
	for _, d := range movedMounts {
		target := "/newroot" + d
		if err := os.MkdirAll(target, 0o755); err != nil {
			// A root without the directory that cannot be written:
			// leave it, the later mounts skip it too.
			b.log.Warn("not moving "+d+" into the root", "err", err)
			unix.Unmount(d, unix.MNT_DETACH)
			continue
		}
		if err := unix.Mount(d, target, "", unix.MS_MOVE, ""); err != nil {
			return "", fmt.Errorf("moving %s into the root: %w", d, err)
		}
	}
	if err := unix.Chdir("/newroot"); err != nil {
		return "", err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return "", fmt.Errorf("moving the root over /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return "", fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return "", err
	}
	return "switched to the root disk", nil
}

// mountRootFilesystems mounts the API and scratch filesystems in the new
// root. A mount point that is missing and cannot be made (a read-only root
// without it) is skipped with a log line, as is an optional mount failing.
func (b *boot) mountRootFilesystems() (string, error) {
	var done, skipped []string
	for _, m := range rootMounts() {
		if isMountPoint(m.Target) {
			continue
		}
		err := m.mount()
		switch {
		case err == nil:
			done = append(done, m.Target)
			b.log.Debug("mounted " + m.String())
		case m.Optional || errors.Is(err, unix.EROFS):
			skipped = append(skipped, m.Target)
			b.log.Warn("skipping mount", "err", err)
		default:
			return "", err
		}
	}
	for _, l := range devLinks {
		if err := os.Symlink(l[1], l[0]); err != nil && !errors.Is(err, os.ErrExist) {
			b.log.Debug("making /dev link", "err", err)
		}
	}
	s := "mounted " + strings.Join(done, " ")
	if len(skipped) > 0 {
		s += "; skipped " + strings.Join(skipped, " ")
	}
	return s, nil
}

func (b *boot) setHostname() (string, error) {
	if err := unix.Sethostname([]byte(b.hostname)); err != nil {
		return "", err
	}
	return "hostname " + b.hostname, nil
}

// bringUpLoopback sets lo up; the kernel then gives it 127.0.0.1 and ::1.
func bringUpLoopback() (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return "", err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return "", fmt.Errorf("reading lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return "", fmt.Errorf("setting lo up: %w", err)
	}
	return "loopback up", nil
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
