package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBusy is returned when an image is being built by another caller.
var ErrBusy = errors.New("busy")

// storeLockPoll is how often lock waits for another builder of a name.
const storeLockPoll = 200 * time.Millisecond

func (s *Store) lockPath(name string) string {
	return filepath.Join(s.dir, "."+name+".lock")
}

// lock takes name's exclusive build lock, waiting (until ctx ends) while
// another process or goroutine holds it. The lock dies with its holder.
func (s *Store) lock(ctx context.Context, name string) (unlock func(), err error) {
	return storeFlock(ctx, s.lockPath(name), "image "+name, s.log)
}

// tryLock takes name's build lock or fails at once with ErrBusy.
func (s *Store) tryLock(name string) (unlock func(), err error) {
	return storeTryFlock(s.lockPath(name), "image "+name)
}

// storeFlock takes an exclusive flock on path (created if need be), polling
// until ctx ends while someone else holds it. what names the locked thing
// in errors and logs.
func storeFlock(ctx context.Context, path, what string, log *slog.Logger) (unlock func(), err error) {
	var tick *time.Ticker
	for {
		unlock, err := storeTryFlock(path, what)
		if !errors.Is(err, ErrBusy) {
			if tick != nil {
				tick.Stop()
			}
			return unlock, err
		}
		if tick == nil {
			log.Info("waiting for another build", "what", what)
			tick = time.NewTicker(storeLockPoll)
			defer tick.Stop()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// storeTryFlock takes an exclusive flock on path or fails at once with
// ErrBusy. Each call opens its own descriptor, so the lock also excludes
// goroutines of one process.
func storeTryFlock(path, what string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is being built: %w", what, ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	return func() { f.Close() }, nil
}

// storeRemoveScratch removes a build scratch dir, first detaching any file
// system still mounted under it (debootstrap mounts /proc, /sys and maybe
// /dev in its target; killed hard, it cannot unmount them). Deleting
// through a live bind mount of /dev would delete the host's device nodes, so
// if anything stays mounted the dir is left alone.
func storeRemoveScratch(dir string) error {
	mounts, err := storeMountsUnder(dir)
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("remove %s: unmount %s: %w", dir, m, err)
		}
	}
	if mounts, _ = storeMountsUnder(dir); len(mounts) > 0 {
		return fmt.Errorf("remove %s: still mounted: %s", dir, strings.Join(mounts, " "))
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// storeMountsUnder lists the mount points at or below dir, deepest first.
func storeMountsUnder(dir string) ([]string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Field 5 is the mount point, with spaces and the like octal-escaped.
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := storeUnescapeMount(fields[4])
		if mp == abs || strings.HasPrefix(mp, abs+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// storeUnescapeMount undoes mountinfo's \ooo escapes.
func storeUnescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + (c - '0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
