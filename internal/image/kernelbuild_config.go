package image

import (
	"bufio"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
)

// kconfigX86_64 is the guest kernel configuration smolvm builds on x86-64:
// a fragment merged over allnoconfig.
//
//go:embed kconfig/smolvm-x86_64.config
var kconfigX86_64 []byte

// kconfigFragment returns the configuration fragment for a Debian
// architecture, or an error naming the architectures smolvm has one for.
func kconfigFragment(arch string) ([]byte, error) {
	if arch == "amd64" {
		return kconfigX86_64, nil
	}
	return nil, fmt.Errorf("no smolvm kernel configuration for %s (have: amd64): pass --kernel PATH instead", arch)
}

// kconfigOption is one line of a Kconfig file: CONFIG_NAME=value, or
// "# CONFIG_NAME is not set", whose Value is "n".
type kconfigOption struct {
	Name  string // without the CONFIG_ prefix
	Value string // y, m, n, a number or a quoted string
}

func (o kconfigOption) String() string {
	if o.Value == "n" {
		return "# CONFIG_" + o.Name + " is not set"
	}
	return "CONFIG_" + o.Name + "=" + o.Value
}

// kconfigParse reads a .config or a fragment. Blank lines and comments are
// skipped; a line that is neither an option nor a comment is an error (with
// its line number), and so is an option set twice with different values in
// one fragment.
func kconfigParse(r io.Reader) ([]kconfigOption, error) {
	var out []kconfigOption
	seen := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		o, ok, err := kconfigParseLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if !ok {
			continue
		}
		if prev, dup := seen[o.Name]; dup {
			if prev != o.Value {
				return nil, fmt.Errorf("line %d: CONFIG_%s set twice (%s, then %s)", n, o.Name, prev, o.Value)
			}
			continue
		}
		seen[o.Name] = o.Value
		out = append(out, o)
	}
	return out, sc.Err()
}

// kconfigParseLine parses one line; ok is false for blank lines and
// comments.
func kconfigParseLine(line string) (o kconfigOption, ok bool, err error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return o, false, nil
	}
	if rest, found := strings.CutPrefix(line, "# CONFIG_"); found {
		name, isUnset := strings.CutSuffix(rest, " is not set")
		if !isUnset || !kconfigValidName(name) {
			return o, false, nil // an ordinary comment that happens to start so
		}
		return kconfigOption{Name: name, Value: "n"}, true, nil
	}
	if strings.HasPrefix(line, "#") {
		return o, false, nil
	}
	rest, found := strings.CutPrefix(line, "CONFIG_")
	if !found {
		return o, false, fmt.Errorf("%q is not CONFIG_NAME=VALUE", line)
	}
	name, value, found := strings.Cut(rest, "=")
	if !found || !kconfigValidName(name) || value == "" {
		return o, false, fmt.Errorf("%q is not CONFIG_NAME=VALUE", line)
	}
	return kconfigOption{Name: name, Value: value}, true, nil
}

func kconfigValidName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// kconfigUnmet lists the options of want that the final configuration got
// otherwise: Kconfig silently drops a request whose dependencies are not
// met, and a kernel missing a driver it was asked for must not be
// installed. An option absent from final counts as "n".
func kconfigUnmet(want, final []kconfigOption) []string {
	got := make(map[string]string, len(final))
	for _, o := range final {
		got[o.Name] = o.Value
	}
	var unmet []string
	for _, w := range want {
		v, ok := got[w.Name]
		if !ok {
			v = "n"
		}
		if v != w.Value {
			unmet = append(unmet, fmt.Sprintf("%s (got %s)", w, kconfigOption{Name: w.Name, Value: v}))
		}
	}
	slices.Sort(unmet)
	return unmet
}

// kconfigHash names a configuration in the kernel cache: the first 12 hex
// digits of the SHA-256 of its options, normalised (sorted, one per line),
// so comments and order do not change it.
func kconfigHash(opts []kconfigOption) string {
	lines := make([]string, len(opts))
	for i, o := range opts {
		lines[i] = o.String()
	}
	slices.Sort(lines)
	sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(sum[:])[:12]
}
