package agent

import (
	"bufio"
	"bytes"
	"os"
	"slices"
	"strconv"
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
	if userProcesses("/proc") > 0 {
		unix.Kill(-1, unix.SIGTERM)
		if !waitNoProcesses(stopGrace) {
			unix.Kill(-1, unix.SIGKILL)
			waitNoProcesses(stopGrace)
		}
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
// rest) or d has passed, and says which.
func waitNoProcesses(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if userProcesses("/proc") == 0 {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// pfKthread is the kernel's PF_KTHREAD task flag.
const pfKthread = 0x00200000

// userProcesses counts the live user-space processes other than PID 1 in a
// proc filesystem: kernel threads and zombies do not count. (kill(-1, 0)
// cannot tell, as it counts kernel threads too.)
func userProcesses(proc string) int {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		b, err := os.ReadFile(proc + "/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which may hold spaces or ")".
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 7 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if flags, err := strconv.ParseUint(f[6], 10, 64); err == nil && flags&pfKthread != 0 {
			continue
		}
		n++
	}
	return n
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
