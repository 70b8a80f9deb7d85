package rpcserver

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/safesock"
)

// TestDispatchCarriesStages: a handler's opstage.Set becomes its call's
// stage in InFlight (what daemon.operations.list reports), and the stage
// goes with the call when it ends.
func TestDispatchCarriesStages(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := safesock.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), uint32(os.Geteuid()))
	reached, release := make(chan struct{}), make(chan struct{})
	s.Handle("work", func(ctx context.Context, _ json.RawMessage) (any, error) {
		opstage.Set(ctx, "first")
		opstage.Set(ctx, "booting")
		close(reached)
		<-release
		return struct{}{}, nil
	})
	go s.Serve(ln)
	defer s.Shutdown(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.New(sock).Call(context.Background(), "work", nil, nil) }()
	<-reached
	ops := s.InFlight("")
	if len(ops) != 1 || ops[0].Method != "work" || ops[0].Stage != "booting" {
		t.Fatalf("in flight %+v, want one work call at stage booting", ops)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ops := s.InFlight(""); len(ops) != 0 {
		t.Fatalf("in flight after the call: %+v", ops)
	}
}
