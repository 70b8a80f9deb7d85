package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/securefs"
)

// Staged is a release verified, downloaded and staged in a fresh root-only
// work directory, its binaries run once (Prepare).
type Staged struct {
	// Dir is the work directory; Remove deletes it with everything in it.
	Dir string
	// Binaries maps each of ReleaseBinaries to its staged file.
	Binaries map[string]string
}

// Remove deletes the work directory.
func (s *Staged) Remove() error { return os.RemoveAll(s.Dir) }

// Prepare gets rel ready to swap in, changing nothing installed: it
// verifies the signature over rel's SHA256SUMS with pubKeyPEM, downloads
// the tarball checking it against the signed hash, stages exactly
// ReleaseBinaries, all in a fresh directory below workRoot that only root
// can reach (workRoot is root's own cache: an update staged where another
// uid can write could be swapped between the check and the install), and
// runs the staged binaries through host: `banger --version` must name
// rel.Version and `bangerd --check-migrations --system` must exit 0 or 1.
// It says "downloading <url>" on out. On failure nothing is left behind.
func Prepare(ctx context.Context, hc *http.Client, rel Release, pubKeyPEM []byte, workRoot string, host Host, out io.Writer) (*Staged, error) {
	sums, err := FetchAndVerifySignatureWithKey(ctx, hc, rel, pubKeyPEM)
	if err != nil {
		return nil, err
	}
	sum, err := rel.TarballSHA256(sums)
	if err != nil {
		return nil, err
	}
	work, err := workDir(workRoot)
	if err != nil {
		return nil, err
	}
	s := &Staged{Dir: work}
	if s.Binaries, err = stageIn(ctx, hc, rel, sum, work, host, out); err != nil {
		s.Remove()
		return nil, err
	}
	return s, nil
}

// stageIn downloads, stages and sanity-runs rel inside work.
func stageIn(ctx context.Context, hc *http.Client, rel Release, sum, work string, host Host, out io.Writer) (map[string]string, error) {
	tarball := filepath.Join(work, rel.TarballName())
	fmt.Fprintf(out, "downloading %s\n", rel.TarballURL)
	if err := DownloadVerified(ctx, hc, rel.TarballURL, sum, tarball); err != nil {
		return nil, err
	}
	stageDir := filepath.Join(work, "stage")
	staged, err := Stage(tarball, stageDir, ReleaseBinaries)
	if err != nil {
		return nil, err
	}
	if err := securefs.CheckRootOnly(stageDir); err != nil {
		return nil, fmt.Errorf("staged release: %w", err)
	}
	if err := sanityCheck(ctx, host, staged, rel.Version); err != nil {
		return nil, err
	}
	return staged, nil
}

// workDir makes a fresh directory for one update below root (root's own
// cache), after checking that only root can change anything on the way
// there (securefs.CheckRootOnly).
func workDir(root string) (string, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	if err := securefs.CheckRootOnly(root); err != nil {
		return "", fmt.Errorf("update work dir: %w", err)
	}
	return os.MkdirTemp(root, "update-")
}

// sanityCheck runs the staged binaries: banger --version must name the
// target; bangerd --check-migrations --system must exit 0 or 1.
func sanityCheck(ctx context.Context, host Host, staged map[string]string, version string) error {
	var out bytes.Buffer
	if err := host.Run(ctx, &out, io.Discard, staged["banger"], "--version"); err != nil {
		return fmt.Errorf("staged banger --version failed: %v", err)
	}
	if !strings.Contains(out.String(), " "+version+" ") {
		return fmt.Errorf("staged banger reports %q, not %s", strings.TrimSpace(out.String()), version)
	}
	var buf bytes.Buffer
	err := host.Run(ctx, &buf, &buf, staged["bangerd"], "--check-migrations", "--system")
	var exit interface{ ExitCode() int }
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		return fmt.Errorf("staged bangerd refuses this database: %s", strings.TrimSpace(buf.String()))
	}
	return nil
}
