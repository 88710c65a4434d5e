package network

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// TapPrefix starts the name of every host link smolvm makes for a VM. Sweep
// treats every link with this prefix as smolvm's.
const TapPrefix = "smolvm-"

// aliasPrefix starts the link alias (IFLA_IFALIAS) that records which VM a
// link belongs to, so Sweep can find the owner from the kernel alone.
const aliasPrefix = "smolvm vm="

// rulePrefix starts the comment on every rule smolvm adds to a base chain:
// "smolvm:<vmID>" or "smolvm:<vmID>:port:<hostPort>".
const rulePrefix = "smolvm:"

// vmIDPattern limits VM IDs to what fits in link aliases, chain names and
// rule comments without quoting.
var vmIDPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`) })

// checkVMID says why id cannot name a VM, or nil.
func checkVMID(id string) error {
	if !vmIDPattern().MatchString(id) {
		return fmt.Errorf("%w: vm id %q (want 1-64 of [A-Za-z0-9_.-], starting alphanumeric)", ErrInvalid, id)
	}
	return nil
}

// TapName is the host link name for vmID: TapPrefix and a hash, 15 bytes,
// the longest name Linux allows.
func TapName(vmID string) string {
	sum := sha256.Sum256([]byte(vmID))
	return TapPrefix + hex.EncodeToString(sum[:4])
}

// Per-VM nftables object names. Chains and sets are named "vm-<id>-<role>".
const (
	chainPre    = "pre"    // prerouting: anti-spoofing and upload rate limit
	chainOut    = "out"    // forward, from the guest
	chainEgress = "egress" // forward, from the guest: the egress policy (rebuilt by SetPolicy)
	chainIn     = "in"     // forward, to the guest
	chainHost   = "host"   // input, from the guest to the host itself
	setCIDR     = "cidr"   // allowlisted prefixes (interval set)
	setDNS      = "dns"    // addresses the resolver let through (timeout set)
)

var vmObjectRoles = []string{chainPre, chainOut, chainEgress, chainIn, chainHost, setCIDR, setDNS}

func objName(vmID, role string) string { return "vm-" + vmID + "-" + role }

// vmOfObject returns the VM ID encoded in a per-VM chain or set name.
func vmOfObject(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "vm-")
	if !ok {
		return "", false
	}
	for _, role := range vmObjectRoles {
		if id, ok := strings.CutSuffix(rest, "-"+role); ok && checkVMID(id) == nil {
			return id, true
		}
	}
	return "", false
}

// ruleTag is the comment on base-chain rules that belong to vmID; port > 0
// marks a port exposure's rules.
func ruleTag(vmID string, port int) string {
	if port > 0 {
		return fmt.Sprintf("%s%s:port:%d", rulePrefix, vmID, port)
	}
	return rulePrefix + vmID
}

// vmOfTag parses a ruleTag back into its VM ID and port (0 if none).
func vmOfTag(tag string) (id string, port int, ok bool) {
	rest, ok := strings.CutPrefix(tag, rulePrefix)
	if !ok {
		return "", 0, false
	}
	id, p, hasPort := strings.Cut(rest, ":port:")
	if checkVMID(id) != nil {
		return "", 0, false
	}
	if hasPort {
		if _, err := fmt.Sscanf(p, "%d", &port); err != nil || port <= 0 {
			return "", 0, false
		}
	}
	return id, port, true
}
