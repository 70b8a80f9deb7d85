package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/trust"
)

// doctor checks what banger needs on this host and says how to fix what is
// missing ('banger doctor'). Every check is quick and changes nothing.
func (d *Daemon) doctor(ctx context.Context, _ json.RawMessage) (any, error) {
	var out []api.DoctorCheck
	add := func(name, status, detail, fix string) {
		out = append(out, api.DoctorCheck{Name: name, Status: status, Detail: detail, Fix: fix})
	}

	// The VMM.
	if d.vmmError != nil {
		add("vmm", api.DoctorFail, d.vmmError.Error(), "build banger-vmm next to bangerd ('make build'), or set firecracker_bin")
	} else {
		add("vmm", api.DoctorOK, fmt.Sprintf("%s (%s): %s", d.vmm.Kind, d.vmm.Binary, d.vmm.Reason), "")
		if d.vmm.Kind == "banger-vmm" {
			if p, err := exec.LookPath("qemu-system-x86_64"); err != nil {
				add("qemu", api.DoctorFail, "qemu-system-x86_64 not found: banger-vmm runs guests with it", "apt-get install qemu-system-x86 (or 'make deps')")
			} else {
				add("qemu", api.DoctorOK, p, "")
			}
		}
	}
	if kvmUsable() {
		add("kvm", api.DoctorOK, "/dev/kvm is usable", "")
	} else {
		add("kvm", api.DoctorWarn, "no usable /dev/kvm: guests run under QEMU's TCG emulation (seconds to boot, slower CPU)", "")
	}

	// Root.
	switch {
	case d.helper == nil:
		add("privileges", api.DoctorOK, d.opsMode, "")
	default:
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := d.helper.Ping(pctx)
		cancel()
		if err != nil {
			add("privileges", api.DoctorFail, "root helper at "+d.helper.Socket()+" does not answer: "+err.Error(), "sudo banger system install --owner $USER (or: sudo systemctl restart bangerd-root.service)")
		} else {
			add("privileges", api.DoctorOK, "root helper at "+d.helper.Socket(), "")
		}
	}

	// Host tools.
	for _, t := range []struct{ bin, pkg, why, status string }{
		{"mkfs.ext4", "e2fsprogs", "VM work disks and images", api.DoctorFail},
		{"debugfs", "e2fsprogs", "images (modules, work seeds, OCI ownership)", api.DoctorFail},
		{"git", "git", "workspaces ('vm run PATH')", api.DoctorWarn},
		{"mmdebstrap", "mmdebstrap", "building the debian-bookworm images", api.DoctorWarn},
	} {
		if p, err := exec.LookPath(t.bin); err != nil {
			add("tool "+t.bin, t.status, t.bin+" not found: needed for "+t.why, "apt-get install "+t.pkg)
		} else {
			add("tool "+t.bin, api.DoctorOK, p, "")
		}
	}

	// The default image.
	name := d.cfg.DefaultImage
	if err := d.images.Known(ctx, name); err != nil {
		add("default image", api.DoctorFail, err.Error(), "set default_image to an image 'banger image list' shows, or pull/build it")
	} else if _, err := d.store.GetImage(ctx, name); errors.Is(err, errdefs.ErrNotFound) {
		fix := ""
		if guestbuild.Builtins[name] != nil && name != guestbuild.TinyImage && os.Geteuid() != 0 {
			fix = "sudo banger internal build-guest --image " + name + " (the daemon cannot run mmdebstrap without root)"
		}
		add("default image", api.DoctorWarn, name+" is not built or pulled yet: the first 'vm run' does it (a few minutes)", fix)
	} else {
		add("default image", api.DoctorOK, name, "")
	}

	// The guest agent and names.
	if bin := agent.FindBinary(); bin == "" {
		add("guest agent", api.DoctorWarn, "no banger-agent binary: VMs boot without one and 'vm ports' cannot answer", "install banger-agent beside bangerd or in /usr/local/lib/banger ('make build')")
	} else {
		add("guest agent", api.DoctorOK, bin, "")
	}
	switch {
	case d.cfg.DNSListen == "":
		add(".vm dns", api.DoctorWarn, "off (dns_listen is empty)", "")
	case d.dnsErr != nil:
		add(".vm dns", api.DoctorWarn, "not serving on "+d.cfg.DNSListen+": "+d.dnsErr.Error(), "choose a free dns_listen")
	default:
		add(".vm dns", api.DoctorOK, "serving <name>.vm on "+d.cfg.DNSListen+" (route .vm to it: docs/dns.md)", "")
	}
	if len(d.vms.GuestDNS) == 0 {
		add("guest dns", api.DoctorWarn, "no nameserver for guests (the host has only loopback resolvers)", "set guest_dns in the config")
	} else {
		add("guest dns", api.DoctorOK, strings.Join(d.vms.GuestDNS, ", "), "")
	}

	// Disks.
	if ok, err := reflinkWorks(d.layout.VMsDir()); err != nil {
		add("reflink", api.DoctorWarn, "cannot test: "+err.Error(), "")
	} else if ok {
		add("reflink", api.DoctorOK, "root disks are reflink copies under "+d.layout.StateDir, "")
	} else {
		add("reflink", api.DoctorWarn, "no reflink under "+d.layout.StateDir+": each VM's root disk is a sparse copy (create costs O(image size))", "put the state dir on XFS (mkfs.xfs -m reflink=1) or btrfs")
	}

	// Updates.
	if trust.IsPlaceholderKey(trust.ReleasePublicKey()) {
		add("release key", api.DoctorWarn, "this build has the placeholder release key: 'banger update' refuses real releases", "build from a tree with the real internal/trust/release-key.pub (docs/release-process.md)")
	} else {
		add("release key", api.DoctorOK, "embedded", "")
	}
	return out, nil
}

// reflinkWorks tries FICLONE between two fresh files in dir.
func reflinkWorks(dir string) (bool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	a, err := os.CreateTemp(dir, ".doctor-")
	if err != nil {
		return false, err
	}
	defer os.Remove(a.Name())
	defer a.Close()
	if _, err := a.Write(make([]byte, 4096)); err != nil {
		return false, err
	}
	b, err := os.Create(filepath.Join(dir, filepath.Base(a.Name())+".clone"))
	if err != nil {
		return false, err
	}
	defer os.Remove(b.Name())
	defer b.Close()
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil, nil
}
