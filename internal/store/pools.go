package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrPoolFull is returned by ReservePoolSlot when a pool already has as
// many members (ready or being made) as its size.
var ErrPoolFull = errors.New("pool is full")

// ErrPoolEmpty is returned by TakeReady when a pool has no ready VM.
var ErrPoolEmpty = errors.New("no ready vm in the pool")

// Pool is one row of the pools table.
type Pool struct {
	Name      string
	Config    []byte // JSON, owned by the SDK
	Size      int
	CreatedAt time.Time
}

// PoolMember is one VM of a pool.
type PoolMember struct {
	VMID  string
	Pool  string
	Ready bool
}

// CreatePool inserts p; ErrExists when its name is taken. check, when not
// nil, runs inside the transaction with every other pool and may refuse
// (a memory budget): its error is returned as is.
func (s *Store) CreatePool(ctx context.Context, p Pool, check func(others []Pool) error) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		others, err := listPools(ctx, tx)
		if err != nil {
			return err
		}
		for _, o := range others {
			if o.Name == p.Name {
				return fmt.Errorf("pool %s: %w", p.Name, ErrExists)
			}
		}
		if check != nil {
			if err := check(others); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO pools (name, config, size, created_at) VALUES (?, ?, ?, ?)",
			p.Name, p.Config, p.Size, time.Now().UnixNano())
		return err
	})
}

// GetPool returns the pool called name, or ErrNotFound.
func (s *Store) GetPool(ctx context.Context, name string) (Pool, error) {
	var p Pool
	var created int64
	err := s.db.QueryRowContext(ctx, "SELECT name, config, size, created_at FROM pools WHERE name = ?", name).
		Scan(&p.Name, &p.Config, &p.Size, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("pool %s: %w", name, ErrNotFound)
	}
	p.CreatedAt = time.Unix(0, created)
	return p, err
}

// ListPools returns every pool by name.
func (s *Store) ListPools(ctx context.Context) ([]Pool, error) {
	return listPools(ctx, s.db)
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func listPools(ctx context.Context, q querier) ([]Pool, error) {
	rows, err := q.QueryContext(ctx, "SELECT name, config, size, created_at FROM pools ORDER BY name")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Pool
	for rows.Next() {
		var p Pool
		var created int64
		if err := rows.Scan(&p.Name, &p.Config, &p.Size, &created); err != nil {
			return nil, err
		}
		p.CreatedAt = time.Unix(0, created)
		out = append(out, p)
	}
	return out, rows.Err()
}

// DeletePool removes the pool and its member rows (not their VMs).
func (s *Store) DeletePool(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM pools WHERE name = ?", name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("pool %s: %w", name, ErrNotFound)
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM pool_vms WHERE pool = ?", name)
		return err
	})
}

// ReservePoolSlot adds vmID to the pool as not yet ready, unless the pool
// already has Size members (ErrPoolFull) or is gone (ErrNotFound).
func (s *Store) ReservePoolSlot(ctx context.Context, pool, vmID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var size int
		err := tx.QueryRowContext(ctx, "SELECT size FROM pools WHERE name = ?", pool).Scan(&size)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("pool %s: %w", pool, ErrNotFound)
		}
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM pool_vms WHERE pool = ?", pool).Scan(&n); err != nil {
			return err
		}
		if n >= size {
			return fmt.Errorf("pool %s has %d of %d: %w", pool, n, size, ErrPoolFull)
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO pool_vms (vm_id, pool, ready, added_at) VALUES (?, ?, 0, ?)",
			vmID, pool, time.Now().UnixNano())
		return err
	})
}

// MarkPoolReady makes a reserved member available to TakeReady.
func (s *Store) MarkPoolReady(ctx context.Context, vmID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE pool_vms SET ready = 1 WHERE vm_id = ?", vmID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("pool member %s: %w", vmID, ErrNotFound)
		}
		return nil
	})
}

// DropPoolMember removes vmID from its pool (a failed or dead member).
func (s *Store) DropPoolMember(ctx context.Context, vmID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "DELETE FROM pool_vms WHERE vm_id = ?", vmID)
		return err
	})
}

// TakeReady hands out the pool's oldest ready VM: in one write
// transaction it picks the row and deletes it, so that no two callers,
// in any process, get the same VM. ErrPoolEmpty when none is ready.
func (s *Store) TakeReady(ctx context.Context, pool string) (string, error) {
	var id string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx,
			"SELECT vm_id FROM pool_vms WHERE pool = ? AND ready = 1 ORDER BY added_at, vm_id LIMIT 1", pool).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("pool %s: %w", pool, ErrPoolEmpty)
		}
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM pool_vms WHERE vm_id = ?", id)
		return err
	})
	return id, err
}

// PoolMembers lists the pool's members, oldest first.
func (s *Store) PoolMembers(ctx context.Context, pool string) ([]PoolMember, error) {
	rows, err := s.db.QueryContext(ctx,
		"SELECT vm_id, pool, ready FROM pool_vms WHERE pool = ? ORDER BY added_at, vm_id", pool)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PoolMember
	for rows.Next() {
		var m PoolMember
		if err := rows.Scan(&m.VMID, &m.Pool, &m.Ready); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}
