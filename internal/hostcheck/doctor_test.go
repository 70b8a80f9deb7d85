package hostcheck

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/sysexec"
)

type fakeHelper struct{ err error }

func (h fakeHelper) Ping(context.Context) error { return h.err }
func (h fakeHelper) Socket() string             { return "/run/banger-root/bangerd-root.sock" }

func input(t *testing.T) DoctorInput {
	state := t.TempDir()
	return DoctorInput{
		VMM:          VMMChoice{Binary: "/usr/local/lib/banger/banger-vmm", Kind: KindBangerVMM, Reason: "no usable KVM; using banger's QEMU-backed VMM"},
		OpsMode:      "in-process (the daemon runs as root)",
		DefaultImage: "tiny",
		ImageKnown:   func(context.Context, string) error { return nil },
		ImageStored:  func(context.Context, string) error { return nil },
		DNSListen:    "127.0.0.1:5353",
		GuestDNS:     []string{"192.0.2.53"},
		StateDir:     state,
		VMsDir:       filepath.Join(state, "vms"),
	}
}

// lookOnlyIn makes the checks find programs in dir alone (not PATH, not
// the sbin directories the real lookup also tries).
func lookOnlyIn(t *testing.T, dir string) {
	saved := lookPath
	t.Cleanup(func() { lookPath = saved })
	lookPath = func(name string) (string, error) { return sysexec.LookIn(name, []string{dir}) }
}

// byName indexes a report, and checks every check appears once.
func byName(t *testing.T, checks []api.DoctorCheck) map[string]api.DoctorCheck {
	t.Helper()
	m := map[string]api.DoctorCheck{}
	for _, c := range checks {
		if _, dup := m[c.Name]; dup {
			t.Fatalf("check %q twice", c.Name)
		}
		m[c.Name] = c
	}
	return m
}

func TestDoctorOrderAndVerdicts(t *testing.T) {
	path := t.TempDir()
	for _, b := range []string{"qemu-system-x86_64", "mkfs.ext4", "debugfs"} {
		exe(t, path, b)
	}
	lookOnlyIn(t, path) // no git, no mmdebstrap
	checks := Doctor(context.Background(), input(t))
	var names []string
	for _, c := range checks {
		names = append(names, c.Name)
	}
	want := "vmm|qemu|kvm|privileges|tool mkfs.ext4|tool debugfs|tool git|tool mmdebstrap|default image|guest agent|.vm dns|.vm names|guest dns|reflink|release key"
	if got := strings.Join(names, "|"); got != want {
		t.Fatalf("checks\n %s\nwant\n %s", got, want)
	}
	m := byName(t, checks)
	for name, status := range map[string]string{
		"vmm": api.DoctorOK, "qemu": api.DoctorOK, "privileges": api.DoctorOK,
		"tool mkfs.ext4": api.DoctorOK, "tool debugfs": api.DoctorOK, "tool git": api.DoctorWarn, "tool mmdebstrap": api.DoctorWarn,
		"default image": api.DoctorOK, ".vm dns": api.DoctorOK, "guest dns": api.DoctorOK,
	} {
		if m[name].Status != status {
			t.Errorf("%s: %+v, want %s", name, m[name], status)
		}
	}
	if c := m["qemu"]; c.Detail != filepath.Join(path, "qemu-system-x86_64") {
		t.Errorf("qemu: %+v", c)
	}
	if c := m["privileges"]; c.Detail != "in-process (the daemon runs as root)" {
		t.Errorf("privileges: %+v", c)
	}
	if c := m["tool git"]; c.Fix != "apt-get install git" || c.Detail != "git not found: needed for workspaces ('vm run PATH')" {
		t.Errorf("tool git: %+v", c)
	}
	if c := m["guest dns"]; c.Detail != "192.0.2.53" {
		t.Errorf("guest dns: %+v", c)
	}
}

func TestDoctorFailures(t *testing.T) {
	lookOnlyIn(t, t.TempDir())
	in := input(t)
	in.VMM, in.VMMErr = VMMChoice{}, errors.New("no VMM found: set firecracker_bin, or build banger-vmm ('make build') next to bangerd")
	in.Helper = fakeHelper{err: errors.New("connection refused")}
	in.ImageKnown = func(context.Context, string) error { return errors.New(`unknown image "nope"`) }
	in.DNSErr = errors.New("address already in use")
	in.GuestDNS = nil
	m := byName(t, Doctor(context.Background(), in))
	if _, ok := m["qemu"]; ok {
		t.Error("qemu checked without a VMM")
	}
	for name, want := range map[string]api.DoctorCheck{
		"vmm":            {Status: api.DoctorFail, Detail: in.VMMErr.Error()},
		"privileges":     {Status: api.DoctorFail, Detail: "root helper at /run/banger-root/bangerd-root.sock does not answer: connection refused"},
		"tool mkfs.ext4": {Status: api.DoctorFail, Detail: "mkfs.ext4 not found: needed for VM work disks and images"},
		"default image":  {Status: api.DoctorFail, Detail: `unknown image "nope"`},
		".vm dns":        {Status: api.DoctorWarn, Detail: "not serving on 127.0.0.1:5353: address already in use"},
		"guest dns":      {Status: api.DoctorWarn, Detail: "no nameserver for guests (the host has only loopback resolvers)"},
	} {
		if c := m[name]; c.Status != want.Status || c.Detail != want.Detail {
			t.Errorf("%s: %+v, want %s %q", name, c, want.Status, want.Detail)
		}
	}
}

func TestDoctorDefaultImageAndDNS(t *testing.T) {
	in := input(t)
	in.Helper = fakeHelper{}
	in.ImageStored = func(context.Context, string) error { return errdefs.ErrNotFound }
	in.DNSListen = ""
	m := byName(t, Doctor(context.Background(), in))
	if c := m["default image"]; c.Status != api.DoctorWarn || c.Detail != "tiny is not built or pulled yet: the first 'vm run' does it (a few minutes)" || c.Fix != "" {
		t.Errorf("default image not stored: %+v", c)
	}
	if c := m["privileges"]; c.Status != api.DoctorOK || c.Detail != "root helper at /run/banger-root/bangerd-root.sock" {
		t.Errorf("privileges: %+v", c)
	}
	if c := m[".vm dns"]; c.Status != api.DoctorWarn || c.Detail != "off (dns_listen is empty)" {
		t.Errorf(".vm dns: %+v", c)
	}
	// Any other store error is not "missing".
	in.ImageStored = func(context.Context, string) error { return errors.New("database is locked") }
	if c := byName(t, Doctor(context.Background(), in))["default image"]; c.Status != api.DoctorOK {
		t.Errorf("default image with a store error: %+v", c)
	}
}

func TestDoctorReflinkCannotTest(t *testing.T) {
	in := input(t)
	in.VMsDir = "/dev/null/vms"
	c := byName(t, Doctor(context.Background(), in))["reflink"]
	if c.Status != api.DoctorWarn || !strings.HasPrefix(c.Detail, "cannot test: ") {
		t.Fatalf("reflink: %+v", c)
	}
}

// TestDoctorVMNames: with systemd-resolved the .vm route is reported ok;
// without it, a warning that says what to add (dnsmasq's line) and that
// ssh-config covers ssh.
func TestDoctorVMNames(t *testing.T) {
	saved := resolvedRuns
	t.Cleanup(func() { resolvedRuns = saved })
	for _, runs := range []bool{true, false} {
		resolvedRuns = func() bool { return runs }
		c := byName(t, Doctor(context.Background(), input(t)))[".vm names"]
		if runs && c.Status != api.DoctorOK {
			t.Errorf("with resolved: %+v", c)
		}
		if !runs && (c.Status != api.DoctorWarn || c.Fix != "route .vm to 127.0.0.1:5353 (dnsmasq: server=/vm/127.0.0.1#5353), or run systemd-resolved" || !strings.Contains(c.Detail, "ssh-config --install")) {
			t.Errorf("without resolved: %+v", c)
		}
	}
}
