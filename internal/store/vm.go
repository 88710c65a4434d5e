package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Status is a VM's lifecycle state.
type Status string

// VM statuses. starting and stopping are held only while a supervisor is
// bringing a VM up or down.
const (
	StatusCreated  Status = "created"
	StatusStarting Status = "starting"
	StatusRunning  Status = "running"
	StatusStopping Status = "stopping"
	StatusStopped  Status = "stopped"
	StatusError    Status = "error"
)

// VM is one row of the vms table.
type VM struct {
	ID            string
	Status        Status
	Backend       string
	Dir           string
	Config        []byte // JSON, owned by the SDK
	Spec          []byte // JSON, owned by the supervisor
	SupervisorPID int
	VMMPID        int
	Error         string
	CreatedAt     time.Time
	UpdatedAt     time.Time
	StartedAt     time.Time
}

const vmColumns = `id, status, backend, dir, config, spec, supervisor_pid, vmm_pid, error,
	created_at, updated_at, started_at`

type scanner interface{ Scan(...any) error }

func scanVM(r scanner) (VM, error) {
	var v VM
	var created, updated, started int64
	err := r.Scan(&v.ID, &v.Status, &v.Backend, &v.Dir, &v.Config, &v.Spec,
		&v.SupervisorPID, &v.VMMPID, &v.Error, &created, &updated, &started)
	v.CreatedAt = time.Unix(0, created)
	v.UpdatedAt = time.Unix(0, updated)
	if started != 0 {
		v.StartedAt = time.Unix(0, started)
	}
	return v, err
}

// CreateVM inserts v; ErrExists when its id is taken.
func (s *Store) CreateVM(ctx context.Context, v VM) error {
	now := time.Now().UnixNano()
	return s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM vms WHERE id = ?", v.ID).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("vm %s: %w", v.ID, ErrExists)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)`,
			v.ID, v.Status, v.Backend, v.Dir, v.Config, orEmptyJSON(v.Spec),
			v.SupervisorPID, v.VMMPID, v.Error, now, now)
		return err
	})
}

// GetVM returns the VM with this id, or ErrNotFound.
func (s *Store) GetVM(ctx context.Context, id string) (VM, error) {
	v, err := scanVM(s.getVM.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	return v, err
}

// ListVMs returns every VM, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+vmColumns+" FROM vms ORDER BY created_at, id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// UpdateVM reads the VM, lets fn change it, and writes it back, all in one
// transaction; fn's error aborts the update and is returned as is.
func (s *Store) UpdateVM(ctx context.Context, id string, fn func(*VM) error) (VM, error) {
	var out VM
	err := s.tx(ctx, func(tx *sql.Tx) error {
		v, err := scanVM(tx.QueryRowContext(ctx, "SELECT "+vmColumns+" FROM vms WHERE id = ?", id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("vm %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if err := fn(&v); err != nil {
			return err
		}
		var started int64
		if !v.StartedAt.IsZero() {
			started = v.StartedAt.UnixNano()
		}
		v.UpdatedAt = time.Now()
		_, err = tx.ExecContext(ctx, `UPDATE vms SET status = ?, backend = ?, dir = ?, config = ?,
			spec = ?, supervisor_pid = ?, vmm_pid = ?, error = ?, updated_at = ?, started_at = ?
			WHERE id = ?`,
			v.Status, v.Backend, v.Dir, v.Config, orEmptyJSON(v.Spec), v.SupervisorPID, v.VMMPID,
			v.Error, v.UpdatedAt.UnixNano(), started, id)
		out = v
		return err
	})
	return out, err
}

// DeleteVM removes the VM and its leases; ErrNotFound when it is not there.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM vms WHERE id = ?", id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("vm %s: %w", id, ErrNotFound)
		}
		return nil
	})
}

func orEmptyJSON(b []byte) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}
