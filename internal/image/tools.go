package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/ext4"
)

// The tools disk: a small read-only ext4 attached to every VM as /dev/vdc,
// holding banger's guest agent. Guests mount it on /run/banger-tools and run
// the agent from there, so the agent follows banger's version (a new one
// reaches new and restarted VMs) without rebuilding any image — the way
// lima ships its guest agent on a cidata disk.

const toolsDiskSize = 16 << 20

// ToolsDisk returns the tools disk for the agent banger finds
// (agent.FindBinary), built once per agent under CacheDir/tools/<sha12>/.
// "" (and no error) when there is no agent binary.
func (s *Service) ToolsDisk(ctx context.Context) (string, error) {
	bin := agent.FindBinary()
	if bin == "" {
		s.toolsOnce.Do(func() { s.Log.Warn("no guest agent binary found; VMs boot without one", "looked_for", agent.BinName) })
		return "", nil
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("guest agent %s: %w", bin, err)
	}
	sum := sha256.Sum256(data)
	dir := filepath.Join(s.Layout.CacheDir, "tools", hex.EncodeToString(sum[:])[:12])
	img := filepath.Join(dir, "tools.ext4")
	if _, err := os.Stat(img); err == nil {
		return img, nil
	}
	l := s.lock("tools")
	l.Lock()
	defer l.Unlock()
	if _, err := os.Stat(img); err == nil {
		return img, nil
	}
	if err := buildToolsDisk(ctx, dir, img, data); err != nil {
		return "", fmt.Errorf("tools disk: %w", err)
	}
	s.Log.Info("tools disk built", "path", img, "agent", bin)
	return img, nil
}

func buildToolsDisk(ctx context.Context, dir, img string, agentBin []byte) error {
	if err := ext4.Check(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tree, err := os.MkdirTemp(dir, ".tree-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	if err := os.Chmod(tree, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tree, agent.BinName), agentBin, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tools-*.ext4")
	if err != nil {
		return err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if err := os.Truncate(tmp.Name(), toolsDiskSize); err != nil {
		return err
	}
	if err := ext4.Make(ctx, tmp.Name(), tree, ext4.MkfsOptions{Label: "banger-tools"}); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o444); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), img)
}
