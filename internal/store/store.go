// Package store is banger's SQLite store (modernc.org/sqlite, pure Go, WAL):
// opening with automatic forward-only migrations, inspecting a database's
// schema state without changing it (bangerd --check-migrations), and the
// rows as the store's own record types (records.go), which no wire type
// shapes: the services convert at their boundary.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"modernc.org/sqlite" // registers the "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"
)

// Store is an open database.
type Store struct {
	DB   *sql.DB
	path string
}

// Open opens (creating if needed) the database at path and applies every
// pending migration. It refuses a database that carries migration ids this
// binary does not know.
func Open(path string) (*Store, error) { return OpenWith(path, migrations) }

// OpenWith is Open with an explicit migration list (tests use a prefix of
// Migrations() to build an older database).
func OpenWith(path string, list []Migration) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// _txlock=immediate: every transaction takes the write lock when it
	// begins, so two processes never both read "not applied" and then both
	// apply a migration. busy_timeout makes the later one wait for the lock
	// instead of failing. journal_mode is set below, not here: see setWAL.
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if err := setWAL(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	s := &Store{DB: db, path: path}
	if err := s.migrate(list); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// setWAL switches the database to WAL (persistent in the file). Two
// connections switching a fresh file at once can get SQLITE_BUSY without the
// busy handler being called (SQLite refuses to wait where waiting could
// deadlock), so a busy answer is retried here for as long as busy_timeout.
func setWAL(db *sql.DB) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var mode string
		err := db.QueryRow(`PRAGMA journal_mode=WAL`).Scan(&mode)
		if err == nil {
			if !strings.EqualFold(mode, "wal") {
				return fmt.Errorf("journal mode is %q, not wal", mode)
			}
			return nil
		}
		if !isBusy(err) || time.Now().After(deadline) {
			return fmt.Errorf("set WAL journal mode: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// Close closes the database.
func (s *Store) Close() error { return s.DB.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.path }

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	id         INTEGER PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at TEXT NOT NULL
)`

// migrate applies the pending migrations of list. Several daemons may open
// one fresh database at once, so each migration runs in its own IMMEDIATE
// transaction (the write lock is held from BEGIN) and what is applied is
// re-read inside it: the first to get the lock applies the migration, the
// others wait on the busy timeout, then see it applied and skip it.
func (s *Store) migrate(list []Migration) error {
	if _, err := s.DB.Exec(createMigrationsTable); err != nil {
		return fmt.Errorf("store %s: %w", s.path, err)
	}
	// A first read without the write lock: an up-to-date database (every
	// open but the first) is opened without writing.
	applied, err := appliedIDs(s.DB)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.path, err)
	}
	if err := s.checkKnown(applied, list); err != nil {
		return err
	}
	for _, m := range list {
		if applied[m.ID] {
			continue
		}
		if err := s.applyOne(m, list); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) checkKnown(applied map[int]bool, list []Migration) error {
	if unknown := unknownIDs(applied, list); len(unknown) > 0 {
		return fmt.Errorf("database %s has migration(s) %s unknown to this binary; it was written by a newer banger", s.path, joinInts(unknown))
	}
	return nil
}

// applyOne applies m unless, under the write lock, it turns out another
// process already has.
func (s *Store) applyOne(m Migration, list []Migration) error {
	tx, err := s.DB.Begin() // BEGIN IMMEDIATE (_txlock=immediate)
	if err != nil {
		return fmt.Errorf("migration %d (%s): begin: %w", m.ID, m.Name, err)
	}
	defer tx.Rollback()
	applied, err := appliedIDs(tx)
	if err != nil {
		return fmt.Errorf("migration %d (%s): %w", m.ID, m.Name, err)
	}
	if err := s.checkKnown(applied, list); err != nil {
		return err
	}
	if applied[m.ID] {
		return nil
	}
	if err := m.Up(tx); err != nil {
		return fmt.Errorf("migration %d (%s): %w", m.ID, m.Name, err)
	}
	if _, err := tx.Exec(`INSERT INTO schema_migrations(id, name, applied_at) VALUES(?, ?, ?)`,
		m.ID, m.Name, time.Now().UTC().Format(time.RFC3339)); err != nil {
		return fmt.Errorf("migration %d (%s): %w", m.ID, m.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %d (%s): %w", m.ID, m.Name, err)
	}
	return nil
}

func appliedIDs(q interface {
	Query(string, ...any) (*sql.Rows, error)
}) (map[int]bool, error) {
	rows, err := q.Query(`SELECT id FROM schema_migrations`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int]bool{}
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

func unknownIDs(applied map[int]bool, list []Migration) []int {
	known := map[int]bool{}
	for _, m := range list {
		known[m.ID] = true
	}
	var out []int
	for id := range applied {
		if !known[id] {
			out = append(out, id)
		}
	}
	sort.Ints(out)
	return out
}

// SchemaState classifies a database against this binary's migrations.
type SchemaState int

// The states, numbered as bangerd --check-migrations exits.
const (
	Compatible       SchemaState = 0
	MigrationsNeeded SchemaState = 1
	Incompatible     SchemaState = 2
)

// SchemaReport is the result of InspectSchema.
type SchemaReport struct {
	State   SchemaState
	Path    string
	NoDB    bool
	Applied []int
	Pending []Migration
	Unknown []int
	Known   int
}

// Line is the one-line summary printed by --check-migrations.
func (r SchemaReport) Line() string {
	switch r.State {
	case Compatible:
		return fmt.Sprintf("compatible: %s has all %d migrations applied", r.Path, r.Known)
	case Incompatible:
		return fmt.Sprintf("incompatible: %s has migration(s) %s unknown to this binary (it knows 1-%d); do not swap this binary in", r.Path, joinInts(r.Unknown), r.Known)
	}
	if r.NoDB {
		return fmt.Sprintf("migrations needed: no database at %s yet; all %d migrations pending (safe to swap in)", r.Path, r.Known)
	}
	names := make([]string, len(r.Pending))
	for i, m := range r.Pending {
		names[i] = fmt.Sprintf("%d %s", m.ID, m.Name)
	}
	return fmt.Sprintf("migrations needed: %s has %d of %d pending (%s); safe to swap in", r.Path, len(r.Pending), r.Known, strings.Join(names, ", "))
}

// InspectSchema opens path read-only and compares its applied migrations
// with this binary's. A missing file or a missing schema_migrations table
// means every migration is pending; it is never an error.
func InspectSchema(ctx context.Context, path string) (SchemaReport, error) {
	return inspect(ctx, path, migrations)
}

func inspect(ctx context.Context, path string, list []Migration) (SchemaReport, error) {
	r := SchemaReport{Path: path, Known: len(list)}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		r.State, r.NoDB, r.Pending = MigrationsNeeded, true, list
		return r, nil
	} else if err != nil {
		return r, err
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return r, err
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type='table' AND name='schema_migrations'`).Scan(&n); err != nil {
		return r, fmt.Errorf("read %s: %w", path, err)
	}
	applied := map[int]bool{}
	if n > 0 {
		if applied, err = appliedIDs(db); err != nil {
			return r, fmt.Errorf("read %s: %w", path, err)
		}
	}
	for id := range applied {
		r.Applied = append(r.Applied, id)
	}
	sort.Ints(r.Applied)
	r.Unknown = unknownIDs(applied, list)
	for _, m := range list {
		if !applied[m.ID] {
			r.Pending = append(r.Pending, m)
		}
	}
	switch {
	case len(r.Unknown) > 0:
		r.State = Incompatible
	case len(r.Pending) > 0:
		r.State = MigrationsNeeded
	default:
		r.State = Compatible
	}
	return r, nil
}

func joinInts(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ", ")
}
