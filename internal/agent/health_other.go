//go:build !linux

package agent

// diskUsage reports nothing off Linux (the agent runs in Linux guests).
func diskUsage([]string) []DiskUsage { return nil }
