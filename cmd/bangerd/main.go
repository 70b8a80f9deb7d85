// Command bangerd is banger's owner daemon.
package main

import (
	"os"

	"github.com/banger-dev/banger/internal/daemon"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr))
}
