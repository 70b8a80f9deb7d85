package e2e

import (
	"testing"

	"github.com/banger-dev/banger/internal/store"
)

// makeDB creates a database with only the first n migrations applied, as an
// older banger would have left it.
func makeDB(t *testing.T, path string, n int) {
	t.Helper()
	s, err := store.OpenWith(path, store.Migrations()[:n])
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// addUnknownMigration records a migration id this binary does not know, as a
// newer banger would have.
func addUnknownMigration(t *testing.T, path string, id int) {
	t.Helper()
	s, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.DB.Exec(`INSERT INTO schema_migrations(id, name, applied_at) VALUES(?, 'from_the_future', '2030-01-01T00:00:00Z')`, id); err != nil {
		t.Fatal(err)
	}
}
