package network

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
)

// Sweep removes what smolvm left in the kernel and in the leases for VMs
// that owned reports false for: smolvm-named links, per-VM nftables chains,
// sets and tagged rules, and leases. Links whose alias names no VM are
// removed too. When no VM's objects remain afterwards it deletes the table
// itself. It returns the IDs it cleaned, sorted.
//
// owned must answer true for every VM being created at the time (the
// caller serialises Sweep with Setup, e.g. under the store's lock):
// a VM mid-Setup that owned denies is torn down.
func (m *Manager) Sweep(ctx context.Context, owned func(vmID string) bool) ([]string, error) {
	orphans := map[string]bool{}
	var errs []error

	links, err := m.smolvmLinks()
	if err != nil {
		return nil, err
	}
	for name, id := range links {
		if id != "" && owned(id) {
			continue
		}
		if id != "" {
			orphans[id] = true
		}
		errs = append(errs, m.deleteLink(name))
	}

	if err := m.sweepTable(owned, orphans); err != nil {
		errs = append(errs, err)
	}

	leases, err := m.leases.List(ctx, "")
	if err != nil {
		errs = append(errs, fmt.Errorf("list leases: %w", err))
	}
	for _, l := range leases {
		if !owned(l.VMID) {
			orphans[l.VMID] = true
			errs = append(errs, m.leases.Release(ctx, l))
		}
	}

	ids := make([]string, 0, len(orphans))
	for id := range orphans {
		ids = append(ids, id)
		m.mu.Lock()
		st := m.vms[id]
		delete(m.vms, id)
		m.mu.Unlock()
		if st != nil {
			for _, e := range st.ports {
				e.stop()
			}
		}
	}
	slices.Sort(ids)
	if len(ids) > 0 {
		m.log.Info("swept orphaned networks", "vms", ids)
	}
	return ids, errors.Join(errs...)
}

// sweepTable deletes the nftables objects of VMs not owned (adding them to
// orphans), and the table when nothing owned is left in it.
func (m *Manager) sweepTable(owned func(string) bool, orphans map[string]bool) error {
	var present map[string]bool
	err := m.flush(func(c *nftables.Conn) error { // reads only: an empty batch
		var err error
		present, err = m.tableVMs(c)
		return err
	})
	if err != nil || present == nil {
		return err // present == nil: no table
	}
	drop := map[string]bool{}
	keep := false
	for id := range present { // owned runs outside the nftables lock
		if owned(id) {
			keep = true
		} else {
			drop[id] = true
			orphans[id] = true
		}
	}
	return m.flush(func(c *nftables.Conn) error {
		if !keep {
			c.DelTable(m.table)
			return nil
		}
		_, err := m.delVM(c, drop)
		return err
	})
}

// tableVMs returns the IDs of VMs with any object in the table, or nil if
// the table does not exist.
func (m *Manager) tableVMs(c *nftables.Conn) (map[string]bool, error) {
	if _, err := c.ListTableOfFamily(m.table.Name, m.table.Family); err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("find table %s: %w", m.table.Name, err)
	}
	ids := map[string]bool{}
	tagged, err := m.listTagged(c)
	if err != nil {
		return nil, err
	}
	for _, t := range tagged {
		ids[t.vmID] = true
	}
	chains, err := c.ListChainsOfTableFamily(m.table.Family)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if id, ok := vmOfObject(ch.Name); ok && ch.Table.Name == m.table.Name {
			ids[id] = true
		}
	}
	sets, err := c.GetSets(m.table)
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		if id, ok := vmOfObject(s.Name); ok {
			ids[id] = true
		}
	}
	return ids, nil
}
