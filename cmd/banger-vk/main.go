// Command banger-vk makes a banger host a Kubernetes node: a
// virtual-kubelet provider over the local bangerd (internal/vk).
package main

import (
	"os"

	"github.com/banger-dev/banger/internal/vk"
)

func main() {
	os.Exit(vk.Main(os.Args[1:], os.Stdout, os.Stderr))
}
