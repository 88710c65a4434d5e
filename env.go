package smolvm

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// SetEnv sets environment variables that every later command in the VM
// sees (Run, Shell, background processes, SSH sessions), over the VM's
// configured Env and under a command's own RunOptions.Env. Values are
// kept exactly (quotes, newlines, $). They live in the guest agent's
// memory: a stop and start forgets them, while Config.Env stays.
func (vm *VM) SetEnv(ctx context.Context, vars map[string]string) error {
	if err := ValidateEnv(vars); err != nil {
		return err
	}
	if _, err := vm.agentCall(ctx, agentproto.Request{Op: agentproto.OpEnvSet, Env: &agentproto.EnvRequest{Set: vars}}); err != nil {
		return fmt.Errorf("setting environment in vm %s: %w", vm.id, err)
	}
	return nil
}

// UnsetEnv removes variables from what later commands see, including
// ones the VM's configuration or image sets.
func (vm *VM) UnsetEnv(ctx context.Context, keys ...string) error {
	m := map[string]string{}
	for _, k := range keys {
		m[k] = ""
	}
	if err := ValidateEnv(m); err != nil {
		return err
	}
	if _, err := vm.agentCall(ctx, agentproto.Request{Op: agentproto.OpEnvUnset, Env: &agentproto.EnvRequest{Unset: keys}}); err != nil {
		return fmt.Errorf("unsetting environment in vm %s: %w", vm.id, err)
	}
	return nil
}

// ListEnv returns the variables every command in the VM gets beyond the
// agent's defaults (PATH, HOME, USER...): the image's and the VM's
// configured ones with SetEnv and UnsetEnv applied.
func (vm *VM) ListEnv(ctx context.Context) (map[string]string, error) {
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return nil, err
	}
	rec, err := vm.record(r)
	if err != nil {
		return nil, err
	}
	base := envList(rec.Config.Env)
	if ic := rec.ImageConfig; ic != nil {
		base = append(slices.Clone(ic.Env), base...)
	}
	resp, err := vm.agentCall(ctx, agentproto.Request{Op: agentproto.OpEnvList, Env: &agentproto.EnvRequest{Base: base}})
	if err != nil {
		return nil, fmt.Errorf("listing environment in vm %s: %w", vm.id, err)
	}
	if resp.Env == nil {
		return map[string]string{}, nil
	}
	return maps.Clone(resp.Env), nil
}
