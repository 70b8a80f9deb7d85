package daemon

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/roothelper"
	"github.com/banger-dev/banger/internal/sysinstall"
	"golang.org/x/sys/unix"
)

// runRootHelper runs bangerd as the root helper.
func runRootHelper(l paths.Layout, ownerUID, ownerGID int, stderr io.Writer) int {
	unix.Umask(0o077)
	if ownerUID < 0 && l.Mode == paths.System {
		m, err := sysinstall.ReadMeta(paths.InstallMetaPath())
		if err != nil {
			fmt.Fprintf(stderr, "bangerd: root helper: cannot read the install metadata (%v); run 'banger system install --owner USER'\n", err)
			return 1
		}
		ownerUID, ownerGID = m.OwnerUID, m.OwnerGID
	}
	if ownerUID < 0 {
		ownerUID = 0
	}
	if ownerGID < 0 {
		ownerGID = ownerUID
	}
	if err := os.MkdirAll(l.HelperRuntimeDir, 0o711); err != nil {
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 1
	}
	log := logging.New(stderr, os.Getenv("BANGER_LOG_LEVEL")).With("component", "bangerd-root")
	// The helper picks the VMM itself, from its own (root's) config and
	// its own install: no request can name a program to run as root.
	cfg, err := config.Load(l.ConfigFile())
	if err != nil {
		fmt.Fprintf(stderr, "bangerd: root helper: %v\n", err)
		return 1
	}
	v, verr := hostcheck.ChooseVMM(cfg.FirecrackerBin)
	if verr != nil {
		log.Warn("no VMM: launches will be refused", "error", verr)
	}
	return roothelper.Main(roothelper.Options{
		Socket:   l.HelperSocketPath(),
		LockFile: filepath.Join(l.HelperRuntimeDir, "bangerd-root.lock"),
		OwnerUID: ownerUID,
		OwnerGID: ownerGID,
		Policy:   policyFor(l, ownerUID, ownerGID, v),
		Log:      log,
	}, stderr)
}
