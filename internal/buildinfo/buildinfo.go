// Package buildinfo holds the version, commit and build time stamped into
// every banger binary at link time (see the Makefile's LDFLAGS).
package buildinfo

import (
	"fmt"
	"runtime"
)

// Stamped with -ldflags "-X github.com/banger-dev/banger/internal/buildinfo.Version=v1.2.3 ...".
var (
	Version = "dev"
	Commit  = "unknown"
	BuiltAt = "unknown"
)

// SmokeFault is empty in every real build. The smoke suite links special
// builds with it set (-X ...SmokeFault=NAME) to produce failures a real part
// cannot be made to produce on demand, and to prove the suite catches the
// bugs banger's survival fixes prevent:
//
//	broken-daemon        bangerd passes --check-migrations but exits 1 as the daemon
//	forward-signals      the VMM is launched with the SDK's default signal forwarding
//	no-rollback-restart  a failed update restores files but does not restart units
var SmokeFault = ""

// Info is the build tuple a binary reports about itself.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuiltAt   string `json:"built_at"`
	GoVersion string `json:"go_version"`
}

// Get returns this binary's build tuple.
func Get() Info {
	return Info{Version: Version, Commit: Commit, BuiltAt: BuiltAt, GoVersion: runtime.Version()}
}

// ShortCommit is the first 7 characters of the commit.
func (i Info) ShortCommit() string {
	if len(i.Commit) > 7 {
		return i.Commit[:7]
	}
	return i.Commit
}

// Line is the one-line form printed by --version:
// "banger v0.1.0 (commit abc1234, built 2026-11-25T20:00:00Z)".
func (i Info) Line(prog string) string {
	return fmt.Sprintf("%s %s (commit %s, built %s)", prog, i.Version, i.ShortCommit(), i.BuiltAt)
}

// IsDev reports whether this is an unversioned development build.
func (i Info) IsDev() bool { return i.Version == "dev" || i.Version == "" }

// SameBuild reports whether two tuples name the same build.
func (i Info) SameBuild(o Info) bool {
	return i.Version == o.Version && i.Commit == o.Commit && i.BuiltAt == o.BuiltAt
}
