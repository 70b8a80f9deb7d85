package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/dnsroute"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/hostcheck/kvmprobe"
	"github.com/banger-dev/banger/internal/trust"
)

// Helper is the root helper as the doctor sees it.
type Helper interface {
	Ping(ctx context.Context) error
	Socket() string
}

// DoctorInput is what the doctor needs of the running daemon.
type DoctorInput struct {
	VMM    VMMChoice
	VMMErr error // why no VMM could be chosen (VMM is then empty)

	// Helper is the root helper; nil when the daemon does root's work
	// in-process. OpsMode says how the daemon reaches root.
	Helper  Helper
	OpsMode string

	DefaultImage string
	// ImageKnown fails when name is no image banger can resolve.
	ImageKnown func(ctx context.Context, name string) error
	// ImageStored fails with errdefs.ErrNotFound when name is not built or
	// pulled yet.
	ImageStored func(ctx context.Context, name string) error

	DNSListen string // the .vm DNS server's address ("" = off)
	DNSErr    error  // why it is not serving
	GuestDNS  []string

	StateDir string
	VMsDir   string // where root disks are made: the reflink probe runs here
}

// Doctor checks what banger needs on this host and says how to fix what is
// missing ('banger doctor'). Every check is quick and changes nothing.
func Doctor(ctx context.Context, in DoctorInput) []api.DoctorCheck {
	r := &report{}
	r.vmm(in)
	r.privileges(ctx, in)
	r.tools()
	r.defaultImage(ctx, in)
	r.agentAndDNS(in)
	r.reflink(in)
	r.releaseKey()
	return r.checks
}

// report collects checks in order.
type report struct{ checks []api.DoctorCheck }

func (r *report) add(name, status, detail, fix string) {
	r.checks = append(r.checks, api.DoctorCheck{Name: name, Status: status, Detail: detail, Fix: fix})
}

// vmm: the VMM, QEMU for banger-vmm, and KVM.
func (r *report) vmm(in DoctorInput) {
	if in.VMMErr != nil {
		r.add("vmm", api.DoctorFail, in.VMMErr.Error(), "build banger-vmm next to bangerd ('make build'), or set firecracker_bin")
	} else {
		r.add("vmm", api.DoctorOK, fmt.Sprintf("%s (%s): %s", in.VMM.Kind, in.VMM.Binary, in.VMM.Reason), "")
		if in.VMM.Kind == KindBangerVMM {
			if p, err := lookPath("qemu-system-x86_64"); err != nil {
				r.add("qemu", api.DoctorFail, "qemu-system-x86_64 not found: banger-vmm runs guests with it", "apt-get install qemu-system-x86 (or 'make deps')")
			} else {
				r.add("qemu", api.DoctorOK, p, "")
			}
		}
	}
	if kvmprobe.Usable() {
		r.add("kvm", api.DoctorOK, "/dev/kvm is usable", "")
	} else {
		r.add("kvm", api.DoctorWarn, "no usable /dev/kvm: guests run under QEMU's TCG emulation (seconds to boot, slower CPU)", "")
	}
}

// privileges: the root helper answers (when the daemon uses one).
func (r *report) privileges(ctx context.Context, in DoctorInput) {
	if in.Helper == nil {
		r.add("privileges", api.DoctorOK, in.OpsMode, "")
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := in.Helper.Ping(pctx)
	cancel()
	if err != nil {
		r.add("privileges", api.DoctorFail, "root helper at "+in.Helper.Socket()+" does not answer: "+err.Error(), "sudo banger system install --owner $USER (or: sudo systemctl restart bangerd-root.service)")
	} else {
		r.add("privileges", api.DoctorOK, "root helper at "+in.Helper.Socket(), "")
	}
}

// tools: the host programs banger runs.
func (r *report) tools() {
	for _, t := range []struct{ bin, pkg, why, status string }{
		{"mkfs.ext4", "e2fsprogs", "VM work disks and images", api.DoctorFail},
		{"debugfs", "e2fsprogs", "images (modules, work seeds, OCI ownership)", api.DoctorFail},
		{"git", "git", "workspaces ('vm run PATH')", api.DoctorWarn},
		{"mmdebstrap", "mmdebstrap", "building the debian-bookworm images", api.DoctorWarn},
	} {
		if p, err := lookPath(t.bin); err != nil {
			r.add("tool "+t.bin, t.status, t.bin+" not found: needed for "+t.why, "apt-get install "+t.pkg)
		} else {
			r.add("tool "+t.bin, api.DoctorOK, p, "")
		}
	}
}

// defaultImage: the configured default image resolves, and is there yet.
func (r *report) defaultImage(ctx context.Context, in DoctorInput) {
	name := in.DefaultImage
	if err := in.ImageKnown(ctx, name); err != nil {
		r.add("default image", api.DoctorFail, err.Error(), "set default_image to an image 'banger image list' shows, or pull/build it")
	} else if err := in.ImageStored(ctx, name); errors.Is(err, errdefs.ErrNotFound) {
		fix := ""
		if guestbuild.Builtins[name] != nil && name != guestbuild.TinyImage && os.Geteuid() != 0 {
			fix = "sudo banger internal build-guest --image " + name + " (the daemon cannot run mmdebstrap without root)"
		}
		r.add("default image", api.DoctorWarn, name+" is not built or pulled yet: the first 'vm run' does it (a few minutes)", fix)
	} else {
		r.add("default image", api.DoctorOK, name, "")
	}
}

// agentAndDNS: the guest agent binary, the .vm DNS server, guest DNS.
// resolvedRuns reports whether the host runs systemd-resolved (tests
// replace it).
var resolvedRuns = dnsroute.Available

func (r *report) agentAndDNS(in DoctorInput) {
	if bin := agent.FindBinary(); bin == "" {
		r.add("guest agent", api.DoctorWarn, "no banger-agent binary: VMs boot without one and 'vm ports' cannot answer", "install banger-agent beside bangerd or in /usr/local/lib/banger ('make build')")
	} else {
		r.add("guest agent", api.DoctorOK, bin, "")
	}
	switch {
	case in.DNSListen == "":
		r.add(".vm dns", api.DoctorWarn, "off (dns_listen is empty)", "")
	case in.DNSErr != nil:
		r.add(".vm dns", api.DoctorWarn, "not serving on "+in.DNSListen+": "+in.DNSErr.Error(), "choose a free dns_listen")
	default:
		r.add(".vm dns", api.DoctorOK, "serving <name>.vm on "+in.DNSListen+" (route .vm to it: docs/dns.md)", "")
		if resolvedRuns() {
			r.add(".vm names", api.DoctorOK, "the host's systemd-resolved sends .vm lookups to it (the root helper routes them through the bridge)", "")
		} else {
			r.add(".vm names", api.DoctorWarn, "the host's resolver does not send .vm lookups to "+in.DNSListen+" (no systemd-resolved); 'ssh NAME.vm' still works after 'banger ssh-config --install'",
				"route .vm to "+in.DNSListen+" (dnsmasq: server=/vm/"+strings.Replace(in.DNSListen, ":", "#", 1)+"), or run systemd-resolved")
		}
	}
	if len(in.GuestDNS) == 0 {
		r.add("guest dns", api.DoctorWarn, "no nameserver for guests (the host has only loopback resolvers)", "set guest_dns in the config")
	} else {
		r.add("guest dns", api.DoctorOK, strings.Join(in.GuestDNS, ", "), "")
	}
}

// reflink: root disks are reflink copies where the VMs live.
func (r *report) reflink(in DoctorInput) {
	if ok, err := ReflinkWorks(in.VMsDir); err != nil {
		r.add("reflink", api.DoctorWarn, "cannot test: "+err.Error(), "")
	} else if ok {
		r.add("reflink", api.DoctorOK, "root disks are reflink copies under "+in.StateDir, "")
	} else {
		r.add("reflink", api.DoctorWarn, "no reflink under "+in.StateDir+": each VM's root disk is a sparse copy (create costs O(image size))", "put the state dir on XFS (mkfs.xfs -m reflink=1) or btrfs")
	}
}

// releaseKey: this build can verify real releases.
func (r *report) releaseKey() {
	if trust.IsPlaceholderKey(trust.ReleasePublicKey()) {
		r.add("release key", api.DoctorWarn, "this build has the placeholder release key: 'banger update' refuses real releases", "build from a tree with the real internal/trust/release-key.pub (docs/release-process.md)")
	} else {
		r.add("release key", api.DoctorOK, "embedded", "")
	}
}
