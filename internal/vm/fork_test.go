package vm

import (
	"context"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
)

// TestForkNames: generated fork names are SRC-fork-N, the first N free in
// the store and in the batch, and stay DNS labels for the longest source
// names.
func TestForkNames(t *testing.T) {
	st := testStore(t)
	ctx := context.Background()
	s := &Service{Store: st}
	if err := st.InsertVM(ctx, store.VMRecord{ID: "a1", Name: "dev-fork-1", ImageID: "img", State: "stopped", GuestIP: "10.0.0.2"}); err != nil {
		t.Fatal(err)
	}
	batch := []store.VMRecord{{Name: "dev-fork-2"}}
	if got := s.forkName(ctx, "dev", batch); got != "dev-fork-3" {
		t.Fatalf("fork name %q, want dev-fork-3", got)
	}
	long := strings.Repeat("a", 55) + "-" + strings.Repeat("b", 7)
	got := s.forkName(ctx, long, nil)
	if err := ValidateName(got); err != nil || !strings.HasSuffix(got, "-fork-1") {
		t.Fatalf("fork name of a 63-character source: %q %v", got, err)
	}
	if api.MaxForks != privops.MaxForks {
		t.Fatalf("api.MaxForks %d, privops.MaxForks %d", api.MaxForks, privops.MaxForks)
	}
}
