// Command banger-vmm is banger's Firecracker-compatible VMM: it takes
// Firecracker's command line and API and runs the guest in QEMU (-M microvm).
// See internal/fcvmm and docs/vmm.md.
package main

import (
	"os"
	"runtime"

	"github.com/banger-dev/banger/internal/fcvmm"
)

// The main goroutine stays on the main thread, whose name fcvmm.Main sets to
// "firecracker" (the process's comm).
func init() { runtime.LockOSThread() }

func main() {
	os.Exit(fcvmm.Main(os.Args[1:]))
}
