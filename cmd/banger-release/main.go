// Command banger-release builds a signed banger release tree (binaries
// tarball, SHA256SUMS, its cosign-compatible signature, manifest.json), or
// generates a release signing key. The work is in internal/release.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-dev/banger/internal/release"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := release.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
