// Command banger-agent is banger's guest agent: it runs inside every banger
// guest and answers the host's health and listening-socket queries over
// vsock, virtio-serial or a debugging listener. See internal/agent and
// docs/agent.md. "banger-agent cp …" is the guest end of 'banger vm cp'
// (internal/treecopy), "banger-agent job …" that of 'banger vm exec -d'
// (internal/guestjob).
package main

import (
	"context"
	"os"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/guestjob"
	"github.com/banger-dev/banger/internal/treecopy"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "cp":
			os.Exit(treecopy.GuestMain(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
		case "job":
			os.Exit(guestjob.GuestMain(os.Args[2:], os.Stdout, os.Stderr))
		}
	}
	os.Exit(agent.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
