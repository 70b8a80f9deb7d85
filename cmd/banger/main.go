// Command banger is the banger CLI.
package main

import (
	"os"

	"github.com/banger-dev/banger/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
