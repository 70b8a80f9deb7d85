// Command banger-agent is banger's guest agent: it runs inside every banger
// guest and answers the host's health and listening-socket queries over
// vsock, virtio-serial or a debugging listener. See internal/agent and
// docs/agent.md. "banger-agent cp …" is the guest end of 'banger vm cp'
// (internal/treecopy).
package main

import (
	"context"
	"os"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/treecopy"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "cp" {
		os.Exit(treecopy.GuestMain(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(agent.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
