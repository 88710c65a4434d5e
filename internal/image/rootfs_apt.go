package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// rootfsDefaultSuite is the Debian suite base images use on hosts that are
// not Debian.
const rootfsDefaultSuite = "bookworm"

// rootfsAptSource is one "deb" entry of the host's apt configuration.
type rootfsAptSource struct {
	URI    string
	Suites []string
}

// rootfsHostSuite returns VERSION_CODENAME from the os-release file at path
// when it describes Debian, else rootfsDefaultSuite.
func rootfsHostSuite(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return rootfsDefaultSuite
	}
	vals := map[string]string{}
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok {
			vals[k] = strings.Trim(v, `"'`)
		}
	}
	if vals["ID"] != "debian" || vals["VERSION_CODENAME"] == "" {
		return rootfsDefaultSuite
	}
	return vals["VERSION_CODENAME"]
}

// rootfsHostMirror picks the Debian archive to debootstrap suite from, out
// of the apt configuration under aptDir (normally /etc/apt): the first
// source that serves suite itself (not suite-security or suite-updates),
// else the first source whose path ends in /debian.
func rootfsHostMirror(aptDir, suite string) (string, error) {
	all, err := rootfsReadAptSources(aptDir)
	if err != nil {
		return "", err
	}
	// debootstrap fetches over http(s) or from a local archive only.
	sources := slices.DeleteFunc(all, func(src rootfsAptSource) bool {
		return !strings.HasPrefix(src.URI, "http://") && !strings.HasPrefix(src.URI, "https://") && !strings.HasPrefix(src.URI, "file:/")
	})
	for _, src := range sources {
		if slices.Contains(src.Suites, suite) {
			return src.URI, nil
		}
	}
	for _, src := range sources {
		if strings.HasSuffix(strings.TrimSuffix(src.URI, "/"), "/debian") {
			return src.URI, nil
		}
	}
	return "", fmt.Errorf("no Debian archive for %s in %s/sources.list or %s/sources.list.d: add one (see sources.list(5))", suite, aptDir, aptDir)
}

// rootfsReadAptSources reads sources.list, then sources.list.d/*.list and
// *.sources in name order, keeping "deb" entries that are enabled.
func rootfsReadAptSources(aptDir string) ([]rootfsAptSource, error) {
	var out []rootfsAptSource
	main := filepath.Join(aptDir, "sources.list")
	data, err := os.ReadFile(main)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read apt sources: %w", err)
	}
	out = append(out, rootfsParseOneLine(data)...)
	files, err := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*"))
	if err != nil {
		return nil, err
	}
	slices.Sort(files)
	for _, f := range files {
		isList, isDeb822 := strings.HasSuffix(f, ".list"), strings.HasSuffix(f, ".sources")
		if !isList && !isDeb822 {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read apt sources: %w", err)
		}
		if isList {
			out = append(out, rootfsParseOneLine(data)...)
		} else {
			out = append(out, rootfsParseDeb822(data)...)
		}
	}
	return out, nil
}

// rootfsParseOneLine parses the one-line format:
// deb [opt=val ...] URI SUITE [COMPONENT...]
func rootfsParseOneLine(data []byte) []rootfsAptSource {
	var out []rootfsAptSource
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		rest := fields[1:]
		if strings.HasPrefix(rest[0], "[") {
			for len(rest) > 0 && !strings.HasSuffix(rest[0], "]") {
				rest = rest[1:]
			}
			if len(rest) > 0 {
				rest = rest[1:]
			}
		}
		if len(rest) >= 2 {
			out = append(out, rootfsAptSource{URI: rest[0], Suites: []string{rest[1]}})
		}
	}
	return out
}

// rootfsParseDeb822 parses the deb822 format of *.sources: stanzas separated
// by blank lines, fields Types, URIs, Suites, Enabled.
func rootfsParseDeb822(data []byte) []rootfsAptSource {
	var out []rootfsAptSource
	for _, stanza := range rootfsDeb822Stanzas(data) {
		if !slices.Contains(strings.Fields(stanza["types"]), "deb") || strings.EqualFold(stanza["enabled"], "no") {
			continue
		}
		suites := strings.Fields(stanza["suites"])
		for _, uri := range strings.Fields(stanza["uris"]) {
			out = append(out, rootfsAptSource{URI: uri, Suites: suites})
		}
	}
	return out
}

// rootfsDeb822Stanzas splits deb822 text into stanzas of lower-cased field
// names to values (continuation lines joined by spaces; comments dropped).
func rootfsDeb822Stanzas(data []byte) []map[string]string {
	var out []map[string]string
	cur, last := map[string]string{}, ""
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur, last = map[string]string{}, ""
	}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				cur[last] += " " + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if ok {
				last = strings.ToLower(strings.TrimSpace(k))
				cur[last] = strings.TrimSpace(v)
			}
		}
	}
	flush()
	return out
}
