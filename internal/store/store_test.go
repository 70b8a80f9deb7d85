package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestOpenAppliesAllMigrationsOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.db")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(p) // second open applies nothing and does not fail
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	if err := s.DB.QueryRow(`SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(migrations) {
		t.Fatalf("rows %d err %v", n, err)
	}
	var mode string
	if err := s.DB.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal mode %q %v", mode, err)
	}
	for _, tbl := range []string{"vms", "images", "kernels"} {
		if err := s.DB.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name=?`, tbl).Scan(&n); err != nil || n != 1 {
			t.Fatalf("table %s missing", tbl)
		}
	}
}

func TestMigrationIDsAreOrderedAndUnique(t *testing.T) {
	for i, m := range migrations {
		if m.ID != i+1 || m.Name == "" || m.Up == nil {
			t.Fatalf("migration %d: %+v", i, m)
		}
	}
}

func TestFailedMigrationRollsBack(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.db")
	bad := append(Migrations(), Migration{ID: 99, Name: "broken", Up: execAll(`CREATE TABLE half(x)`, `THIS IS NOT SQL`)})
	if _, err := OpenWith(p, bad); err == nil {
		t.Fatal("broken migration accepted")
	}
	r, err := inspect(context.Background(), p, bad)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != MigrationsNeeded || len(r.Pending) != 1 || r.Pending[0].ID != 99 {
		t.Fatalf("report %+v", r)
	}
	s, _ := Open(p)
	defer s.Close()
	var n int
	s.DB.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name='half'`).Scan(&n)
	if n != 0 {
		t.Fatal("partial migration left a table behind")
	}
}

func TestInspectDoesNotCreateOrModify(t *testing.T) {
	p := filepath.Join(t.TempDir(), "none.db")
	r, err := InspectSchema(context.Background(), p)
	if err != nil || r.State != MigrationsNeeded || !r.NoDB {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatal("inspect created the database")
	}
}

func TestOpenRefusesUnknownMigration(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.db")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	s.DB.Exec(`INSERT INTO schema_migrations(id,name,applied_at) VALUES(77,'future','x')`)
	s.Close()
	if _, err := Open(p); err == nil {
		t.Fatal("opened a database from the future")
	}
}
