package agent

import (
	"bufio"
	"errors"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// stopGrace is how long processes get between SIGTERM and SIGKILL at
// power-off.
const stopGrace = 2 * time.Second

// fatal logs err, then powers off: PID 1 must never exit.
func (b *boot) fatal(err error) {
	b.log.Error("fatal: " + err.Error() + "; powering off")
	b.powerOff("fatal error")
}

// powerOff stops every process (SIGTERM, a short grace, SIGKILL), unmounts
// what it can, remounts / read-only, syncs and powers the machine off. It
// never returns.
func (b *boot) powerOff(reason string) {
	b.log.Info("powering off", "reason", reason)
	unix.Sync()
	if unix.Kill(-1, unix.SIGTERM) == nil {
		waitNoProcesses(stopGrace)
		unix.Kill(-1, unix.SIGKILL)
		waitNoProcesses(stopGrace)
	}
	unmountAll(b)
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	b.log.Error("power off failed; halting here", "err", err)
	for {
		time.Sleep(time.Hour)
	}
}

// waitNoProcesses waits until PID 1 is alone (the reaper collects the
// rest) or d has passed.
func waitNoProcesses(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if errors.Is(unix.Kill(-1, 0), unix.ESRCH) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// unmountAll unmounts every mount but / (innermost first) and remounts /
// read-only, so that the disks are clean. Busy mounts are left alone.
func unmountAll(b *boot) {
	var targets []string
	if f, err := os.Open("/proc/self/mounts"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fields := strings.Fields(sc.Text()); len(fields) > 1 && fields[1] != "/" {
				targets = append(targets, fields[1])
			}
		}
		f.Close()
	}
	slices.Reverse(targets)
	for _, t := range targets {
		if err := unix.Unmount(t, 0); err != nil {
			b.log.Debug("unmount", "target", t, "err", err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		b.log.Debug("remounting / read-only", "err", err)
	}
}
