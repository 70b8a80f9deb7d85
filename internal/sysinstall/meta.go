// Package sysinstall installs banger as a system service: binaries under
// /usr/local, the install metadata in /etc/banger/install.toml, and two
// systemd units — bangerd.service (the owner daemon, User=owner) and
// bangerd-root.service (the root helper).
//
// Both units use KillMode=process so that stopping or restarting a unit
// signals only its main process: the VMMs the helper launched (its
// children, in its cgroup) keep running. The helper unit also sets
// SendSIGKILL=no, because some systemd versions SIGKILL left-over cgroup
// processes in the final-kill stage; the price is that a hung helper is never
// killed, so the helper takes an exclusive lock at start and a second one
// refuses to serve beside it (see internal/roothelper and docs/privileges.md).
package sysinstall

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pelletier/go-toml/v2"

	"github.com/banger-dev/banger/internal/atomicfile"
)

// Meta is /etc/banger/install.toml.
type Meta struct {
	OwnerUser   string `toml:"owner_user" json:"owner_user"`
	OwnerUID    int    `toml:"owner_uid" json:"owner_uid"`
	OwnerGID    int    `toml:"owner_gid" json:"owner_gid"`
	OwnerHome   string `toml:"owner_home" json:"owner_home"`
	InstalledAt string `toml:"installed_at" json:"installed_at"`
	Version     string `toml:"version" json:"version"`
	Commit      string `toml:"commit" json:"commit"`
	BuiltAt     string `toml:"built_at" json:"built_at"`
}

// ReadMeta reads the install metadata.
func ReadMeta(path string) (Meta, error) {
	var m Meta
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("%s: %v", path, err)
	}
	return m, nil
}

// WriteMeta writes the install metadata atomically (0644).
func WriteMeta(path string, m Meta) error {
	b, err := toml.Marshal(m)
	if err != nil {
		return err
	}
	b = append([]byte("# Written by 'banger system install' and 'banger update'. Do not edit.\n"), b...)
	return writeFile(path, b, 0o644)
}

// writeFile replaces path with data atomically (atomicfile.WriteFile),
// creating its directory first if need be.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, data, mode)
}
