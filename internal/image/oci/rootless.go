package oci

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Without root a build cannot chown files or create device nodes in the
// staging dir. It records what it could not do, keyed by the entry's path
// (symlink-free, relative to the root), and writes it into the finished
// ext4 image with debugfs, which edits the file system directly.

// deferred is what an entry needs that only debugfs can give it.
type deferred struct {
	uid, gid int
	dev      *devNode // a device node to create in the image
}

type devNode struct {
	mode         uint32 // type and permission bits
	major, minor uint32
}

// deferOwner records that base in pfd belongs to uid:gid.
func (t *tree) deferOwner(pfd int, base string, uid, gid int) error {
	if uid == os.Geteuid() && gid == os.Getegid() {
		return nil
	}
	return t.deferEntry(pfd, base, deferred{uid: uid, gid: gid})
}

func (t *tree) deferEntry(pfd int, base string, d deferred) error {
	dir, err := t.physical(pfd)
	if err != nil {
		return err
	}
	t.later[path.Join(dir, base)] = d
	return nil
}

// forget drops the record of an entry about to be replaced.
func (t *tree) forget(pfd int, base string) error {
	if t.privileged {
		return nil
	}
	dir, err := t.physical(pfd)
	if err != nil {
		return err
	}
	delete(t.later, path.Join(dir, base))
	return nil
}

// deferredLink gives a hard link the record of the file it links to, so
// the owner survives the original name being removed.
func (t *tree) deferredLink(target string, pfd int, base string) error {
	tfd, err := t.resolve(path.Dir(target))
	if err != nil {
		return nil
	}
	defer unix.Close(tfd)
	tdir, err := t.physical(tfd)
	if err != nil {
		return err
	}
	if d, ok := t.later[path.Join(tdir, path.Base(target))]; ok {
		return t.deferEntry(pfd, base, d)
	}
	return nil
}

// deferredScript turns the records whose entries still exist into a
// debugfs script, or "" when there is nothing to do.
func (t *tree) deferredScript() string {
	if t.privileged {
		return ""
	}
	paths := make([]string, 0, len(t.later))
	for p := range t.later {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var b strings.Builder
	if _, ok := t.later["."]; !ok {
		b.WriteString("sif / uid 0\nsif / gid 0\n")
	}
	for _, p := range paths {
		d := t.later[p]
		if strings.ContainsAny(p, "\"\n\r") {
			t.warnOnce("debugfs-quote", "keeping the caller's ownership of a file whose name debugfs cannot take", "path", p)
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(t.dir, p), &st) != nil {
			continue // removed by a later layer
		}
		q := `"/` + p + `"`
		if p == "." {
			q = "/"
		}
		if d.dev != nil {
			kind := "c"
			if d.dev.mode&unix.S_IFMT == unix.S_IFBLK {
				kind = "b"
			}
			fmt.Fprintf(&b, "rm %s\nmknod %s %s %d %d\nsif %s mode 0%o\n", q, q, kind, d.dev.major, d.dev.minor, q, d.dev.mode)
		}
		fmt.Fprintf(&b, "sif %s uid %d\nsif %s gid %d\n", q, d.uid, q, d.gid)
	}
	return b.String()
}

// runDebugfs applies a script to the ext4 image img. debugfs exits 0 even
// when a request fails, so anything on its stderr but its banner is an error.
func runDebugfs(ctx context.Context, img, script string) error {
	tool, err := findTool("debugfs")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(img), ".smolvm-debugfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(script)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-w", "-f", f.Name(), img)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debugfs: %w: %s", err, oneLine(stderr.String()))
	}
	var problems []string
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "debugfs ") {
			problems = append(problems, line)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("debugfs: %s", strings.Join(problems, "; "))
	}
	return nil
}
