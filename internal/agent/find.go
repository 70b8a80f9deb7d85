package agent

import (
	"os"
	"path/filepath"
)

// BinEnv names the environment variable that points at the agent binary.
const BinEnv = "BANGER_AGENT_BIN"

// BinName is the agent's file name, on the host and on the tools disk.
const BinName = "banger-agent"

// FindBinary locates the agent for the host side to put on VMs' tools
// disks: $BANGER_AGENT_BIN, beside the running executable, or
// /usr/local/lib/banger. "" when there is none (VMs then boot without an
// agent, and 'vm ports' says so).
func FindBinary() string {
	cands := []string{os.Getenv(BinEnv)}
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(exe), BinName))
	}
	cands = append(cands, "/usr/local/lib/banger/"+BinName)
	for _, c := range cands {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			if abs, err := filepath.Abs(c); err == nil {
				return abs
			}
		}
	}
	return ""
}
