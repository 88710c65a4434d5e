package agent

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// envVar is one variable the host set (or unset, which hides a variable
// the image or the VM's configuration would give).
type envVar struct {
	value string
	unset bool
}

// ValidEnvKey says whether k can name an environment variable: a letter
// or underscore, then letters, digits and underscores.
func ValidEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// layerEnv puts base (KEY=VALUE entries from the image and the VM's
// configuration) over env, then the variables set and unset with OpEnvSet
// and OpEnvUnset.
func (st *State) layerEnv(env, base []string) ([]string, error) {
	for _, kv := range base {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("exec: environment entry %q is not KEY=VALUE", kv)
		}
		env = envSet(env, kv)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, k := range slices.Sorted(maps.Keys(st.env)) {
		v := st.env[k]
		if v.unset {
			env = envDel(env, k)
		} else {
			env = envSet(env, k+"="+v.value)
		}
	}
	return env, nil
}

// envDel removes key k.
func envDel(env []string, k string) []string {
	return slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
}

func (st *State) setEnv(set map[string]string, unset []string) error {
	for k, v := range set {
		if !ValidEnvKey(k) {
			return fmt.Errorf("environment variable name %q is not valid (letters, digits, _; not starting with a digit)", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("environment variable %s: value holds a NUL byte", k)
		}
	}
	for _, k := range unset {
		if !ValidEnvKey(k) {
			return fmt.Errorf("environment variable name %q is not valid", k)
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for k, v := range set {
		st.env[k] = envVar{value: v}
	}
	for _, k := range unset {
		st.env[k] = envVar{unset: true}
	}
	return nil
}

// handleEnv serves OpEnvSet, OpEnvUnset and OpEnvList.
func (s *server) handleEnv(c *agentproto.Conn, op string, req *agentproto.EnvRequest) {
	if req == nil {
		replyError(c, errors.New(op+" request without env field"))
		return
	}
	st := s.cfg.State
	switch op {
	case agentproto.OpEnvSet:
		if err := st.setEnv(req.Set, nil); err != nil {
			replyError(c, err)
			return
		}
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
	case agentproto.OpEnvUnset:
		if err := st.setEnv(nil, req.Unset); err != nil {
			replyError(c, err)
			return
		}
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
	case agentproto.OpEnvList:
		env, err := st.layerEnv(nil, req.Base)
		if err != nil {
			replyError(c, err)
			return
		}
		m := map[string]string{}
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
		c.WriteJSON(agentproto.FrameResponse, agentproto.Response{Env: m})
	}
}
