package image

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/ext4"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/oci"
	"github.com/banger-dev/banger/internal/sysexec"
)

// The guest kit makes an imported OCI image bootable as a banger guest
// without touching what the image has: /.banger/bin holds banger's static
// busybox (with a link per applet) and /.banger/init is PID 1 (init= on the
// kernel command line). See guestkit/init and docs/oci-import.md.

//go:embed guestkit/init
var kitInit []byte

const kitInitPath = "/.banger/init"

type guestKit struct {
	busybox []byte
	applets []string
}

// newGuestKit takes the static busybox out of the built-in guest's rootfs
// (debugfs, no mount) and lists its applets.
func newGuestKit(ctx context.Context, art guestbuild.Artifacts) (*guestKit, error) {
	tmp, err := os.MkdirTemp("", "banger-kit-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bb := filepath.Join(tmp, "busybox")
	if err := ext4.Dump(ctx, art.Rootfs, "/bin/busybox", bb); err != nil {
		return nil, fmt.Errorf("busybox from %s: %w", art.Rootfs, err)
	}
	data, err := os.ReadFile(bb)
	if err != nil || len(data) < 100000 {
		return nil, fmt.Errorf("busybox from %s: not found or truncated", art.Rootfs)
	}
	if err := os.Chmod(bb, 0o755); err != nil {
		return nil, err
	}
	out, err := sysexec.Output(ctx, bb, "--list")
	if err != nil {
		return nil, err
	}
	k := &guestKit{busybox: data}

	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.ContainsAny(a, "/\"\\") {
			k.applets = append(k.applets, a)
		}
	}
	return k, nil
}

// inject adds the kit to a flattened image tree.
func (k *guestKit) inject(t *oci.Tree) error {
	if t.Has("/.banger") {
		return fmt.Errorf("the image already has a /.banger directory")
	}
	if err := t.AddFile("/.banger/bin/busybox", 0o755, k.busybox); err != nil {
		return err
	}
	for _, a := range k.applets {
		if err := t.AddSymlink("/.banger/bin/"+a, "busybox"); err != nil {
			return err
		}
	}
	if err := t.AddFile(kitInitPath, 0o755, kitInit); err != nil {
		return err
	}

	// Mount points the init needs, in case the image has none.
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/etc"} {
		if !t.Has(d) {
			if err := t.AddFile(d+"/.keep", 0o644, nil); err != nil {
				return err
			}
		}
	}
	return nil
}
