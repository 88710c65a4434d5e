package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// ErrExhausted is returned when every candidate value of a lease is taken.
var ErrExhausted = errors.New("no free lease")

// Lease is one value (an IP, a port) held by a VM.
type Lease struct {
	Kind  string
	Value string
	VMID  string
}

// AcquireLease gives vmID the first of candidates that no VM holds for kind.
// Leases go when their VM's row is deleted.
func (s *Store) AcquireLease(ctx context.Context, kind, vmID string, candidates []string) (string, error) {
	var got string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for _, c := range candidates {
			res, err := tx.ExecContext(ctx,
				"INSERT OR IGNORE INTO leases (kind, value, vm_id) VALUES (?, ?, ?)", kind, c, vmID)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 1 {
				got = c
				return nil
			}
		}
		return fmt.Errorf("%s for vm %s: %w", kind, vmID, ErrExhausted)
	})
	return got, err
}

// ReleaseLeases frees every lease vmID holds of kind ("" for all kinds).
func (s *Store) ReleaseLeases(ctx context.Context, vmID, kind string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			"DELETE FROM leases WHERE vm_id = ? AND (? = '' OR kind = ?)", vmID, kind, kind)
		return err
	})
}

// Leases lists the leases vmID holds ("" for every VM's).
func (s *Store) Leases(ctx context.Context, vmID string) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx,
		"SELECT kind, value, vm_id FROM leases WHERE ? = '' OR vm_id = ? ORDER BY kind, value", vmID, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var l Lease
		if err := rows.Scan(&l.Kind, &l.Value, &l.VMID); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}
