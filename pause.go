package smolvm

import (
	"context"
	"errors"
	"fmt"

	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// Pause stops the VM's vCPUs; its memory, processes and connections stay
// as they are until Resume. A paused VM runs no commands (ErrState). Only
// a running VM can be paused.
func (vm *VM) Pause(ctx context.Context) error {
	if err := vm.control(ctx, store.StatusRunning, supervisor.Pause); err != nil {
		return fmt.Errorf("pausing vm %s: %w", vm.id, err)
	}
	return nil
}

// Resume restarts a paused VM's vCPUs.
func (vm *VM) Resume(ctx context.Context) error {
	if err := vm.control(ctx, store.StatusPaused, supervisor.Resume); err != nil {
		return fmt.Errorf("resuming vm %s: %w", vm.id, err)
	}
	return nil
}

// control asks the VM's supervisor to do op when the VM is in status want.
func (vm *VM) control(ctx context.Context, want store.Status, op func(context.Context, string) error) error {
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return err
	}
	if r.Status != want {
		return fmt.Errorf("%w: it is %s, not %s", ErrState, r.Status, want)
	}
	err = op(ctx, r.Dir)
	if errors.Is(err, supervisor.ErrNotRunning) {
		r = vm.h.reconcile(ctx, r)
		return fmt.Errorf("%w: it is %s (%v)", ErrState, r.Status, err)
	}
	return err
}
