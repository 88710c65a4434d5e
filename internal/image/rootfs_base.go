package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// rootfsBasePackages are installed on top of Debian's minbase variant.
var rootfsBasePackages = []string{"bash", "ca-certificates", "coreutils", "curl", "git", "python3"}

// rootfsBase is the "base" recipe: Debian (the host's release when the host
// is Debian) bootstrapped with debootstrap from the host's own apt mirror.
// It takes a minute or more and needs root.
type rootfsBase struct {
	osRelease   string // normally /etc/os-release
	aptDir      string // normally /etc/apt
	packages    []string
	headroomMiB int
}

func (r rootfsBase) inputs() (rootfsInputs, error) {
	suite := rootfsHostSuite(r.osRelease)
	mirror, err := rootfsHostMirror(r.aptDir, suite)
	if err != nil {
		return rootfsInputs{}, err
	}
	return rootfsInputs{
		Recipe: "base", Version: rootfsRecipeVersion, Packages: r.packages,
		Suite: suite, Mirror: mirror, Source: "debootstrap:" + suite,
	}, nil
}

func (r rootfsBase) build(ctx context.Context, in rootfsInputs, dst string, p *progressReporter) error {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return errors.New("debootstrap not found: run `apt-get install debootstrap`")
	}
	if os.Geteuid() != 0 {
		return errors.New("building the base image needs root (debootstrap chroots and sets file owners)")
	}
	root := filepath.Join(filepath.Dir(dst), "root")
	p.Printf("bootstrapping Debian %s from %s with %s", in.Suite, in.Mirror, strings.Join(in.Packages, ", "))
	progress := &rootfsDebootstrapProgress{p: p}
	err := storeRunTool(ctx, storeTool{
		Name: "debootstrap",
		Args: []string{
			"--variant=minbase", "--include=" + strings.Join(in.Packages, ","),
			in.Suite, root, in.Mirror,
		},
		Env:    []string{"DEBIAN_FRONTEND=noninteractive"},
		OnLine: progress.line,
	})
	if err != nil {
		return fmt.Errorf("debootstrap %s: %w", in.Suite, err)
	}
	p.Phase("tidying", 0)
	if err := rootfsBaseTidy(root); err != nil {
		return fmt.Errorf("tidy base image: %w", err)
	}
	p.Phase("making ext4", 0)
	return MakeExt4(ctx, root, dst, r.headroomMiB)
}

// rootfsBaseTidy drops apt's caches and gives the tree a neutral identity:
// each VM gets its own hostname, machine-id and DNS at boot (debootstrap
// copied the host's /etc/hostname and /etc/resolv.conf in).
func rootfsBaseTidy(root string) error {
	for _, pattern := range []string{
		"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
		"var/lib/apt/lists/*_*", "var/log/*.log", "var/log/apt/*",
	} {
		matches, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	files := map[string]string{
		"etc/hostname":    "smolvm\n",
		"etc/machine-id":  "",
		"etc/resolv.conf": "",
		"etc/hosts":       "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
	}
	// dbus keeps its own copy when installed; empty it too.
	if _, err := os.Lstat(filepath.Join(root, "var/lib/dbus/machine-id")); err == nil {
		files["var/lib/dbus/machine-id"] = ""
	}
	for name, content := range files {
		if err := rootfsReplaceFile(filepath.Join(root, name), content); err != nil {
			return err
		}
	}
	return nil
}

// rootfsReplaceFile replaces path with a new regular file. It never writes
// through what is there: a symlink in a guest tree may point at a host file.
func rootfsReplaceFile(path, content string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// rootfsDebootstrapProgress turns debootstrap's "I: Verb package" lines
// into progress phases: downloading (count unknown until it ends), then
// extracting, unpacking and configuring, each out of the packages fetched.
// Unpacking and configuring happen twice (required packages, then the
// rest), so counts are kept per verb and resume.
type rootfsDebootstrapProgress struct {
	p      *progressReporter
	phase  string
	counts map[string]int64
}

// rootfsDebootstrapPhases maps debootstrap's verbs to phase names.
var rootfsDebootstrapPhases = map[string]string{
	"Retrieving":  "downloading packages",
	"Extracting":  "extracting packages",
	"Unpacking":   "unpacking packages",
	"Configuring": "configuring packages",
}

func (d *rootfsDebootstrapProgress) line(line string) {
	rest, ok := strings.CutPrefix(line, "I: ")
	if !ok {
		return
	}
	verb, what, _ := strings.Cut(rest, " ")
	phase, ok := rootfsDebootstrapPhases[verb]
	if !ok {
		return
	}
	what = strings.TrimSuffix(strings.TrimSpace(what), "...")
	// "Retrieving Packages" (an index) has no version; "Unpacking the base
	// system" is a heading. Only one-word package names (with a version
	// for Retrieving) count.
	words := strings.Fields(what)
	if verb == "Retrieving" && len(words) != 2 || verb != "Retrieving" && len(words) != 1 {
		return
	}
	if d.counts == nil {
		d.counts = map[string]int64{}
	}
	if phase != d.phase {
		d.phase = phase
		total := d.counts["Retrieving"]
		if verb == "Retrieving" {
			total = 0
		}
		d.p.Phase(phase, total)
		d.p.Set(d.counts[verb])
	}
	d.counts[verb]++
	d.p.Set(d.counts[verb])
}
