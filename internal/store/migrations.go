package store

import "database/sql"

// Migration is one forward-only schema step. IDs are never edited, reordered
// or reused; a new schema change is a new entry at the end.
type Migration struct {
	ID   int
	Name string
	Up   func(tx *sql.Tx) error
}

func execAll(stmts ...string) func(*sql.Tx) error {
	return func(tx *sql.Tx) error {
		for _, s := range stmts {
			if _, err := tx.Exec(s); err != nil {
				return err
			}
		}
		return nil
	}
}

// migrations is the ordered list applied by Open.
var migrations = []Migration{
	{ID: 1, Name: "baseline", Up: execAll(
		`CREATE TABLE kernels (
			id          TEXT PRIMARY KEY,
			name        TEXT NOT NULL UNIQUE,
			version     TEXT NOT NULL DEFAULT '',
			vmlinux     TEXT NOT NULL DEFAULT '',
			vmlinuz     TEXT NOT NULL DEFAULT '',
			initrd      TEXT NOT NULL DEFAULT '',
			created_at  TEXT NOT NULL,
			meta_json   TEXT NOT NULL DEFAULT '{}'
		)`,
		`CREATE TABLE images (
			id          TEXT PRIMARY KEY,
			name        TEXT NOT NULL UNIQUE,
			rootfs      TEXT NOT NULL,
			kernel_id   TEXT REFERENCES kernels(id),
			managed     INTEGER NOT NULL DEFAULT 1,
			created_at  TEXT NOT NULL,
			meta_json   TEXT NOT NULL DEFAULT '{}'
		)`,
		`CREATE TABLE vms (
			id           TEXT PRIMARY KEY,
			name         TEXT NOT NULL UNIQUE,
			image_id     TEXT NOT NULL REFERENCES images(id),
			state        TEXT NOT NULL,
			vcpu         INTEGER NOT NULL,
			memory_mib   INTEGER NOT NULL,
			disk_bytes   INTEGER NOT NULL,
			nat          INTEGER NOT NULL DEFAULT 0,
			guest_ip     TEXT NOT NULL DEFAULT '',
			created_at   TEXT NOT NULL,
			updated_at   TEXT NOT NULL,
			runtime_json TEXT NOT NULL DEFAULT '{}'
		)`,
	)},
	{ID: 2, Name: "unique_guest_ip", Up: execAll(
		`CREATE UNIQUE INDEX vms_guest_ip ON vms(guest_ip) WHERE guest_ip != ''`,
	)},
}

// Migrations returns a copy of the known migrations, in order.
func Migrations() []Migration { return append([]Migration(nil), migrations...) }
