-- Snapshots and warm pools. IF NOT EXISTS: migrations are numbered by
-- their order, and a file added beside this one by a parallel change must
-- not make a re-run of it fail.
CREATE TABLE IF NOT EXISTS snapshots (
	name       TEXT PRIMARY KEY,
	source_vm  TEXT NOT NULL,          -- the VM it was taken of (may be gone since)
	dir        TEXT NOT NULL,
	manifest   TEXT NOT NULL,          -- JSON, owned by the SDK
	created_at INTEGER NOT NULL        -- unix nanoseconds
);

CREATE TABLE IF NOT EXISTS pools (
	name       TEXT PRIMARY KEY,
	config     TEXT NOT NULL,          -- JSON, owned by the SDK
	size       INTEGER NOT NULL,       -- ready VMs to keep
	created_at INTEGER NOT NULL
);

-- A pool's members: VMs being made (ready = 0) or ready to hand out.
-- Handing one out deletes its row, in the transaction that picks it.
CREATE TABLE IF NOT EXISTS pool_vms (
	vm_id    TEXT PRIMARY KEY,
	pool     TEXT NOT NULL REFERENCES pools(name) ON DELETE CASCADE,
	ready    INTEGER NOT NULL DEFAULT 0,
	added_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pool_vms_pool ON pool_vms(pool, ready, added_at);
