package agent

import (
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// userCache keeps users resolved by lookupUser for as long as /etc/passwd
// and /etc/group stay as they were (same inode, size, mtime and ctime):
// two stats per exec instead of reading and parsing both files, which
// costs a millisecond under emulation. The zero value is ready; safe for
// concurrent use.
type userCache struct {
	mu    sync.Mutex
	stamp [2]fileStamp         // of passwd and group when users was filled
	users map[string]guestUser // by spec
}

// fileStamp tells whether a file changed: a rewrite in place changes
// mtime and ctime, a replacement by rename changes the inode.
type fileStamp struct {
	ino, size    int64
	mtime, ctime syscall.Timespec
	ok           bool // the file existed
}

func stampOf(path string) fileStamp {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileStamp{}
	}
	return fileStamp{ino: int64(st.Ino), size: st.Size, mtime: st.Mtim, ctime: st.Ctim, ok: true}
}

// recent reports a file changed within the last two seconds. Inode times
// have the kernel tick's granularity, so a same-size rewrite in place that
// soon after a read could keep its stamp: such a file is read again, not
// cached, until it has been still for a while (git's "racy clean" rule).
func (f fileStamp) recent() bool {
	return f.ok && time.Since(time.Unix(f.mtime.Unix())) < racyWindow
}

const racyWindow = 2 * time.Second

// lookup is lookupUser(root, spec), from the cache when the files are
// unchanged. The result's Groups must not be modified.
func (uc *userCache) lookup(root, spec string) (guestUser, error) {
	stamp := [2]fileStamp{stampOf(filepath.Join(root, "etc/passwd")), stampOf(filepath.Join(root, "etc/group"))}
	uc.mu.Lock()
	u, ok := uc.users[spec]
	hit := ok && stamp == uc.stamp
	uc.mu.Unlock()
	if hit {
		return u, nil
	}
	u, err := lookupUser(root, spec)
	if err != nil {
		return u, err
	}
	uc.mu.Lock()
	defer uc.mu.Unlock()
	if stamp != uc.stamp || uc.users == nil {
		uc.stamp, uc.users = stamp, map[string]guestUser{}
	}
	if len(uc.users) < maxCachedUsers && !stamp[0].recent() && !stamp[1].recent() {
		uc.users[spec] = u
	}
	return u, nil
}

// maxCachedUsers bounds the cache: specs come from the host.
const maxCachedUsers = 64
