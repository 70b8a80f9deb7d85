// Command banger-agent is banger's guest agent: it runs inside every banger
// guest and answers the host's health and listening-socket queries over
// vsock, virtio-serial or a debugging listener. See internal/agent and
// docs/agent.md.
package main

import (
	"context"
	"os"

	"github.com/banger-dev/banger/internal/agent"
)

func main() {
	os.Exit(agent.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
