package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// StatusPaused is a running VM whose vCPUs are stopped (pause); its
// supervisor and VMM live on.
const StatusPaused Status = "paused"

// Snapshot is one row of the snapshots table.
type Snapshot struct {
	Name      string
	SourceVM  string
	Dir       string
	Manifest  []byte // JSON, owned by the SDK
	CreatedAt time.Time
}

// CreateSnapshot inserts sn; ErrExists when its name is taken.
func (s *Store) CreateSnapshot(ctx context.Context, sn Snapshot) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM snapshots WHERE name = ?", sn.Name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("snapshot %s: %w", sn.Name, ErrExists)
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO snapshots (name, source_vm, dir, manifest, created_at) VALUES (?, ?, ?, ?, ?)",
			sn.Name, sn.SourceVM, sn.Dir, sn.Manifest, sn.CreatedAt.UnixNano())
		return err
	})
}

// GetSnapshot returns the snapshot called name, or ErrNotFound.
func (s *Store) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	sn, err := scanSnapshot(s.db.QueryRowContext(ctx,
		"SELECT name, source_vm, dir, manifest, created_at FROM snapshots WHERE name = ?", name))
	if errors.Is(err, sql.ErrNoRows) {
		return sn, fmt.Errorf("snapshot %s: %w", name, ErrNotFound)
	}
	return sn, err
}

// ListSnapshots returns every snapshot, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT name, source_vm, dir, manifest, created_at FROM snapshots ORDER BY created_at, name")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		sn, err := scanSnapshot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}

// DeleteSnapshot removes the snapshot's row; ErrNotFound when absent.
func (s *Store) DeleteSnapshot(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM snapshots WHERE name = ?", name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("snapshot %s: %w", name, ErrNotFound)
		}
		return nil
	})
}

func scanSnapshot(r scanner) (Snapshot, error) {
	var sn Snapshot
	var created int64
	err := r.Scan(&sn.Name, &sn.SourceVM, &sn.Dir, &sn.Manifest, &created)
	sn.CreatedAt = time.Unix(0, created)
	return sn, err
}
