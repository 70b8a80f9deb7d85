package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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

// Daemons started at once (several CLIs auto-starting on a fresh HOME) open
// and migrate one fresh database concurrently. Every Open must succeed and
// the schema must be migrated exactly once: migrations serialise on a write
// lock (BEGIN IMMEDIATE) and re-read what is applied under it.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	const rounds, openers = 15, 8
	for round := 0; round < rounds; round++ {
		p := filepath.Join(t.TempDir(), "b.db")
		start := make(chan struct{})
		errs := make(chan error, openers)
		var wg sync.WaitGroup
		for i := 0; i < openers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				s, err := Open(p)
				if err == nil {
					err = s.Close()
				}
				errs <- err
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: concurrent Open: %v", round, err)
			}
		}
		s, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int
		rows, err := s.DB.Query(`SELECT id FROM schema_migrations ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int
			rows.Scan(&id)
			ids = append(ids, id)
		}
		rows.Close()
		if len(ids) != len(migrations) {
			t.Fatalf("round %d: schema_migrations %v, want each of %d once", round, ids, len(migrations))
		}
		var n int
		s.DB.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type='index' AND name='vms_guest_ip'`).Scan(&n)
		if n != 1 {
			t.Fatalf("round %d: vms_guest_ip index count %d", round, n)
		}
		s.Close()
	}
}

// The same across processes, as two daemons really are: each child opens the
// fresh database at once and reports its error, if any, on stderr.
func TestConcurrentOpenAcrossProcesses(t *testing.T) {
	if p := os.Getenv("BANGER_STORE_TEST_OPEN"); p != "" {
		s, err := Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		s.Close()
		os.Exit(0)
	}
	const rounds, openers = 5, 6
	for round := 0; round < rounds; round++ {
		p := filepath.Join(t.TempDir(), "b.db")
		cmds := make([]*exec.Cmd, openers)
		outs := make([]*bytes.Buffer, openers)
		for i := range cmds {
			cmds[i] = exec.Command(os.Args[0], "-test.run=^TestConcurrentOpenAcrossProcesses$")
			cmds[i].Env = append(os.Environ(), "BANGER_STORE_TEST_OPEN="+p)
			outs[i] = &bytes.Buffer{}
			cmds[i].Stdout, cmds[i].Stderr = outs[i], outs[i]
		}
		for _, c := range cmds {
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range cmds {
			if err := c.Wait(); err != nil {
				t.Errorf("round %d: process %d: %v: %s", round, i, err, outs[i])
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		r, err := inspect(context.Background(), p, migrations)
		if err != nil || r.State != Compatible || len(r.Applied) != len(migrations) {
			t.Fatalf("round %d: %+v %v", round, r, err)
		}
	}
}
