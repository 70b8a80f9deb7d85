package sysinstall

import (
	"fmt"
	"strings"
)

// Unit names.
const (
	DaemonUnit = "bangerd.service"
	HelperUnit = "bangerd-root.service"
)

// Layout is where an install puts things.
type Layout struct {
	BinDir   string // /usr/local/bin: banger, bangerd
	LibDir   string // /usr/local/lib/banger: banger-vmm, banger-agent
	UnitDir  string // /etc/systemd/system
	MetaPath string // /etc/banger/install.toml
}

// DefaultLayout is the FHS install layout.
func DefaultLayout() Layout {
	return Layout{BinDir: "/usr/local/bin", LibDir: "/usr/local/lib/banger", UnitDir: "/etc/systemd/system", MetaPath: "/etc/banger/install.toml"}
}

// UnitOptions change how units are rendered. The zero value is what banger
// installs; tests use the fields to prove the suite catches a regression.
type UnitOptions struct {
	// KillMode overrides KillMode= on both units ("" = process).
	KillMode string
}

// HelperCapabilities is the root helper's capability bounding set; each one
// is justified in docs/privileges.md.
var HelperCapabilities = []string{"CAP_NET_ADMIN", "CAP_CHOWN", "CAP_DAC_READ_SEARCH"}

// RenderUnits returns the unit files' text by name.
func RenderUnits(l Layout, m Meta, o UnitOptions) map[string]string {
	km := o.KillMode
	if km == "" {
		km = "process"
	}
	bangerd := l.BinDir + "/bangerd"
	helper := fmt.Sprintf(`# Rendered by banger; 'banger system install' and 'banger update' rewrite it.
[Unit]
Description=banger root helper (privileged operations for bangerd)
Documentation=file:///usr/local/share/doc/banger/privileges.md
After=network.target

[Service]
Type=simple
ExecStart=%s --root-helper --system
Restart=on-failure
RestartSec=1
# VMMs are children of this service: stopping or restarting it must signal
# only the helper itself, never them.
KillMode=%s
SendSIGKILL=no
TimeoutStopSec=15
RuntimeDirectory=banger-root
RuntimeDirectoryMode=0711
RuntimeDirectoryPreserve=yes
StateDirectory=banger-vms
StateDirectoryMode=0755
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/banger-vms /run/banger-root
ProtectHome=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=%s

[Install]
WantedBy=multi-user.target
`, bangerd, km, strings.Join(HelperCapabilities, " "))
	daemon := fmt.Sprintf(`# Rendered by banger; 'banger system install' and 'banger update' rewrite it.
[Unit]
Description=banger daemon (owner: %s)
Wants=bangerd-root.service
After=network.target bangerd-root.service

[Service]
Type=simple
User=%s
Group=%d
ExecStart=%s --system
Restart=on-failure
RestartSec=1
KillMode=%s
TimeoutStopSec=30
RuntimeDirectory=banger
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
StateDirectory=banger
StateDirectoryMode=0700
CacheDirectory=banger
CacheDirectoryMode=0700
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/banger /var/cache/banger /run/banger -/var/lib/banger-vms
ProtectHome=read-only
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
`, m.OwnerUser, m.OwnerUser, m.OwnerGID, bangerd, km)
	return map[string]string{HelperUnit: helper, DaemonUnit: daemon}
}
