package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// ErrLeaseTaken is returned when the value asked for is held by another VM.
var ErrLeaseTaken = errors.New("lease held by another vm")

// AcquireLeaseFunc reserves for vmID the value of kind that pick chooses,
// in one write transaction: pick sees every value of kind already taken
// (value → holder) and returns the value to take, or an error that is
// returned as it is. A value vmID already holds is success; one another VM
// holds is ErrLeaseTaken. Leases go when their VM's row is deleted.
func (s *Store) AcquireLeaseFunc(ctx context.Context, kind, vmID string, pick func(taken map[string]string) (string, error)) (string, error) {
	var got string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		taken, err := leasesOfKind(ctx, tx, kind)
		if err != nil {
			return err
		}
		v, err := pick(taken)
		if err != nil {
			return err
		}
		if holder, ok := taken[v]; ok {
			if holder != vmID {
				return fmt.Errorf("%s %s: %w (%s)", kind, v, ErrLeaseTaken, holder)
			}
			got = v
			return nil
		}
		if _, err := tx.ExecContext(ctx,
			"INSERT INTO leases (kind, value, vm_id) VALUES (?, ?, ?)", kind, v, vmID); err != nil {
			return fmt.Errorf("recording %s lease %s for vm %s: %w", kind, v, vmID, err)
		}
		got = v
		return nil
	})
	return got, err
}

func leasesOfKind(ctx context.Context, tx *sql.Tx, kind string) (map[string]string, error) {
	rows, err := tx.QueryContext(ctx, "SELECT value, vm_id FROM leases WHERE kind = ?", kind)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	taken := map[string]string{}
	for rows.Next() {
		var v, id string
		if err := rows.Scan(&v, &id); err != nil {
			return nil, err
		}
		taken[v] = id
	}
	return taken, rows.Err()
}

// ReleaseLease frees the lease of kind and value if vmID holds it; a lease
// that is not held, or held by another VM, is left as it is.
func (s *Store) ReleaseLease(ctx context.Context, kind, value, vmID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			"DELETE FROM leases WHERE kind = ? AND value = ? AND vm_id = ?", kind, value, vmID)
		return err
	})
}
