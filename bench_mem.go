package smolvm

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// benchProcMem is a process's memory as the kernel accounts it, in KiB:
// VmRSS from /proc/PID/status (resident pages, shared ones counted whole)
// and Pss from /proc/PID/smaps_rollup (shared pages divided among their
// users: what one more VM really costs).
type benchProcMem struct {
	RSS int64
	Pss int64
}

// benchReadProcMem reads pid's memory under procRoot ("/proc").
func benchReadProcMem(procRoot string, pid int) (benchProcMem, error) {
	var m benchProcMem
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	var err error
	if m.RSS, err = benchProcField(filepath.Join(dir, "status"), "VmRSS:"); err != nil {
		return m, err
	}
	if m.Pss, err = benchProcField(filepath.Join(dir, "smaps_rollup"), "Pss:"); err != nil {
		return m, err
	}
	return m, nil
}

// benchProcField returns the "kB" value of the first line of path starting
// with key ("VmRSS:   12345 kB").
func benchProcField(path, key string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key)
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("%s: malformed %s line %q", path, key, sc.Text())
		}
		return strconv.ParseInt(fields[0], 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s line", path, key)
}
