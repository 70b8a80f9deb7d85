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
	"github.com/banger-dev/banger/internal/safesock"
)

// TestShutdownCallIsAnswered: a call that makes the server shut down (as
// daemon.shutdown does) still gets its response before connections close.
func TestShutdownCallIsAnswered(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 50; i++ {
		sock := filepath.Join(dir, "s.sock")
		ln, err := safesock.Listen(sock)
		if err != nil {
			t.Fatal(err)
		}
		s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), uint32(os.Geteuid()))
		stop := make(chan struct{}, 1)
		s.Handle("stop", func(ctx context.Context, _ json.RawMessage) (any, error) {
			stop <- struct{}{}
			return struct{}{}, nil
		})
		done := make(chan struct{})
		go func() { s.Serve(ln); close(done) }()
		go func() { <-stop; s.Shutdown(context.Background()) }()
		if err := client.New(sock).Call(context.Background(), "stop", nil, nil); err != nil {
			t.Fatalf("iteration %d: the shutdown call got no answer: %v", i, err)
		}
		<-done
	}
}
