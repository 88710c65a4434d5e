CREATE TABLE vms (
	id             TEXT PRIMARY KEY,
	status         TEXT NOT NULL,
	backend        TEXT NOT NULL DEFAULT '',
	dir            TEXT NOT NULL,
	config         TEXT NOT NULL,          -- JSON: the user's configuration
	spec           TEXT NOT NULL DEFAULT '{}', -- JSON: what the supervisor launches
	supervisor_pid INTEGER NOT NULL DEFAULT 0,
	vmm_pid        INTEGER NOT NULL DEFAULT 0,
	error          TEXT NOT NULL DEFAULT '',
	created_at     INTEGER NOT NULL,       -- unix nanoseconds
	updated_at     INTEGER NOT NULL,
	started_at     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE leases (
	kind   TEXT NOT NULL,                  -- "ip", "port", "ssh-port", ...
	value  TEXT NOT NULL,
	vm_id  TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
	PRIMARY KEY (kind, value)
);
CREATE INDEX leases_vm ON leases(vm_id);
