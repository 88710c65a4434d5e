package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// initramfsFormat names the layout BuildInitramfs writes; change it whenever
// the layout or the module list changes so old cache entries are not reused.
const initramfsFormat = "smolvm-initramfs/3"

// initramfsModuleDir is where module files go inside the initramfs.
const initramfsModuleDir = "/lib/modules"

// BuildInitramfs returns the path of a newc cpio archive under cacheDir
// holding the agent binary at agentPath as /init (without its debug
// information) and, when k.ModulesDir is
// set, the kernel modules the guest needs to boot (listed in load order in
// agentproto.InitramfsModuleList). The archive is uncompressed: unpacking is
// cheaper than decompressing under software emulation. It is named by the
// sha256 of its inputs and reused when it exists; a new one is written to a
// temporary file and renamed into place, so concurrent builders are safe.
func BuildInitramfs(ctx context.Context, cacheDir, agentPath string, k Kernel) (string, error) {
	memo := initramfsMemoPath(cacheDir, agentPath, k)
	if memo != "" {
		if b, err := os.ReadFile(memo); err == nil {
			dst := filepath.Join(cacheDir, filepath.Base(string(b)))
			if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() {
				return dst, nil
			}
		}
	}
	dst, err := buildInitramfs(ctx, cacheDir, agentPath, k)
	if err == nil && memo != "" {
		// Best effort: a missing memo only costs the next start a rehash.
		if os.MkdirAll(filepath.Dir(memo), 0o755) == nil {
			os.WriteFile(memo, []byte(filepath.Base(dst)), 0o644)
		}
	}
	return dst, err
}

// initramfsMemoPath names a small file remembering which archive the
// agent binary and modules, as identified by their files' identity (path,
// size, mtime, inode), produced; it spares each start reading and hashing
// the whole binary. "" when the inputs cannot be identified.
func initramfsMemoPath(cacheDir, agentPath string, k Kernel) string {
	h := sha256.New()
	fmt.Fprintln(h, initramfsFormat, agentPath, k.ModulesDir)
	for _, p := range []string{agentPath, k.ModulesDir} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return ""
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return ""
		}
		fmt.Fprintln(h, fi.Size(), fi.ModTime().UnixNano(), st.Ino, st.Dev)
	}
	return filepath.Join(cacheDir, "memo", hex.EncodeToString(h.Sum(nil)[:16]))
}

func buildInitramfs(ctx context.Context, cacheDir, agentPath string, k Kernel) (string, error) {
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return "", fmt.Errorf("reading agent binary: %w", err)
	}
	var mods []kmodFile
	if k.ModulesDir != "" {
		mods, err = kmodResolve(ctx, k.ModulesDir, kmodBootModules())
		if err != nil {
			return "", fmt.Errorf("choosing kernel modules from %s: %w", k.ModulesDir, err)
		}
	}
	dst := filepath.Join(cacheDir, "initramfs-"+initramfsDigest(agent, mods)+".cpio")
	if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() {
		return dst, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("creating initramfs cache: %w", err)
	}
	// Debug information is of no use in the guest and costs boot time.
	agent, _ = initramfsStripELF(agent)
	if err := initramfsWriteFile(dst, agent, mods); err != nil {
		return "", fmt.Errorf("writing initramfs: %w", err)
	}
	return dst, nil
}

// initramfsDigest hashes everything that goes into the archive.
func initramfsDigest(agent []byte, mods []kmodFile) string {
	h := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(initramfsFormat))
	field(agent)
	for _, m := range mods {
		field([]byte(m.Name))
		field(m.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// initramfsWriteFile writes the archive to a temporary file beside dst and
// renames it into place; on error nothing is left behind.
func initramfsWriteFile(dst string, agent []byte, mods []kmodFile) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".initramfs-*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := initramfsWrite(tmp, agent, mods); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// initramfsWrite writes the archive's entries.
func initramfsWrite(w *os.File, agent []byte, mods []kmodFile) error {
	c := newCPIOWriter(w)
	for _, d := range []string{"dev", "proc", "sys", "newroot", "run", "tmp", "etc", "etc/smolvm", "lib", "lib/modules"} {
		c.Dir(d, 0o755)
	}
	// The kernel opens /dev/console as PID 1's stdin, stdout and stderr
	// before running /init, so the node must exist before devtmpfs does.
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("init", 0o755, agent)
	var list bytes.Buffer
	for _, m := range mods {
		p := path.Join(initramfsModuleDir, m.Name+".ko")
		c.File(p, 0o644, m.Data)
		fmt.Fprintln(&list, strings.TrimSpace(p+" "+strings.Join(m.Deps, ",")))
	}
	c.File(agentproto.InitramfsModuleList, 0o644, list.Bytes())
	return c.Close()
}
