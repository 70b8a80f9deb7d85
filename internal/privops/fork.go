package privops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/securefs"
	"github.com/banger-dev/banger/internal/vmdir"
	"golang.org/x/sys/unix"
)

// writeLayout records in the VM's directory that its VMM gets names
// relative to it (vmdir.LayoutName).
func writeLayout(d *os.File) error {
	if ok, err := hasLayout(d); err != nil || ok {
		return err
	}
	if err := securefs.RemoveBeneath(d, vmdir.LayoutName); err != nil {
		return err
	}
	f, err := securefs.CreateBeneath(d, vmdir.LayoutName, unix.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(vmdir.Layout)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// hasLayout reports whether the VM's snapshot and disks use relative names.
func hasLayout(d *os.File) (bool, error) {
	f, err := securefs.OpenBeneath(d, vmdir.LayoutName, unix.O_RDONLY, 0)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64))
	return string(b) == vmdir.Layout, err
}

// forkedDisks are the disks a fork gets its own of; the tools disk is
// read-only and shared (a hard link).
var forkedDisks = []string{vmdir.RootfsName, vmdir.WorkDiskName}

// ForkDisks implements Ops. Src must be parked (its snapshot in its
// directory, no VMM) and its snapshot must use relative names. With
// banger-vmm, Src's writable disks are frozen (hard-linked into a new
// frozen-N/, made read-only) and Src and each child get qcow2 overlays
// backed by them; Src switches to its overlay first, by rename, so at no
// point can it write a file a child reads. Under Firecracker each child gets
// a copy (reflink or sparse). Each child then gets the tools disk and Src's
// snapshot as hard links. On failure the children's directories are
// removed; Src is left consistent (at worst on an overlay of a frozen copy
// of itself).
func (l *Local) ForkDisks(ctx context.Context, r ForkReq) (resp ForkResp, err error) {
	if err := l.Policy.ValidateFork(r); err != nil {
		return resp, err
	}
	sd, spath, err := l.vmDir(r.Src, false)
	if err != nil {
		return resp, err
	}
	defer sd.Close()
	if pid, ok := running(vmdir.Dir(spath)); ok {
		return resp, errdefs.New(errdefs.BadRequest, "vm %s runs (vmm pid %d): fork works from a parked VM's snapshot", r.Src, pid)
	}
	for _, n := range []string{vmdir.SnapshotName, vmdir.SnapshotMemName} {
		if err := checkRegular(sd, n); err != nil {
			return resp, errdefs.New(errdefs.BadRequest, "vm %s has no snapshot to fork from (%v)", r.Src, err)
		}
	}
	if ok, err := hasLayout(sd); err != nil {
		return resp, err
	} else if !ok {
		return resp, errdefs.New(errdefs.BadRequest, "vm %s was started by an older banger: its snapshot names its disks by absolute path, so a fork would use the parent's; stop and start it once, then fork", r.Src)
	}
	for _, c := range r.Children {
		if _, err := os.Lstat(filepath.Join(l.Policy.VMsDir, c)); err == nil {
			return resp, errdefs.New(errdefs.AlreadyExists, "vm %s already has a directory", c)
		}
	}
	overlay := l.Policy.VMMKind == "banger-vmm"
	// What the children's disks are made from: the frozen files (overlay)
	// or Src's own (copies).
	from := map[string]string{}
	formats := map[string]string{}
	if overlay {
		// A source parked since its last fork (a warm-start template) has
		// overlays nothing wrote: its last frozen disks are still its
		// disks, and freezing again would only lengthen the chain.
		n, err := unchangedSince(sd, spath, formats)
		if err == nil && n == "" {
			n, err = l.freeze(ctx, sd, spath, formats)
		}
		if err != nil {
			return resp, fmt.Errorf("freeze %s's disks: %w", r.Src, err)
		}
		for _, name := range forkedDisks {
			from[name] = filepath.Join(spath, n, name)
		}
		resp.Method = string(disk.Overlay)
	}
	var made []string
	defer func() {
		if err != nil {
			vms, verr := l.vms()
			if verr != nil {
				return
			}
			for _, c := range made {
				_ = securefs.RemoveBeneath(vms, c)
			}
			vms.Close()
		}
	}()
	for _, c := range r.Children {
		made = append(made, c)
		cd, cpath, err := l.vmDir(c, true)
		if err != nil {
			return resp, err
		}
		method, err := l.forkInto(ctx, sd, cd, cpath, overlay, from, formats)
		cd.Close()
		if err != nil {
			return resp, fmt.Errorf("fork %s into %s: %w", r.Src, c, err)
		}
		if !overlay {
			resp.Method = method
		}
	}
	logging.From(ctx).Info("forks made", "src", r.Src, "children", strings.Join(r.Children, ","), "method", resp.Method)
	return resp, nil
}

// stampName, in frozen-N/, records Src's overlays as freeze left them.
const stampName = "source"

// stampOf describes Src's current writable disks: any write changes it.
func stampOf(sd *os.File) (string, error) {
	var b strings.Builder
	for _, dname := range forkedDisks {
		f, err := securefs.OpenBeneath(sd, dname, unix.O_RDONLY, 0)
		if err != nil {
			return "", err
		}
		st, err := securefs.Stat(f)
		f.Close()
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s %d %d %d.%09d\n", dname, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return b.String(), nil
}

// latestFrozen is the name of Src's newest frozen-N ("" if none).
func latestFrozen(spath string) (string, int, error) {
	ents, err := os.ReadDir(spath)
	if err != nil {
		return "", 0, err
	}
	best := 0
	for _, e := range ents {
		if k, ok := strings.CutPrefix(e.Name(), vmdir.FrozenPrefix); ok {
			if i, err := strconv.Atoi(k); err == nil && i > best {
				best = i
			}
		}
	}
	if best == 0 {
		return "", 0, nil
	}
	return vmdir.FrozenPrefix + strconv.Itoa(best), best, nil
}

// unchangedSince returns Src's newest frozen-N when Src's overlays are
// exactly as that freeze left them (and fills formats), else "".
func unchangedSince(sd *os.File, spath string, formats map[string]string) (string, error) {
	name, _, err := latestFrozen(spath)
	if err != nil || name == "" {
		return "", err
	}
	fd, err := securefs.OpenBeneath(sd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return "", err
	}
	defer fd.Close()
	f, err := securefs.OpenBeneath(fd, stampName, unix.O_RDONLY, 0)
	if err != nil {
		return "", nil // an older freeze, or one cut short: freeze again
	}
	was, err := io.ReadAll(io.LimitReader(f, 4096))
	f.Close()
	if err != nil {
		return "", err
	}
	now, err := stampOf(sd)
	if err != nil || now != string(was) {
		return "", err
	}
	for _, dname := range forkedDisks {
		df, err := securefs.OpenBeneath(fd, dname, unix.O_RDONLY, 0)
		if err != nil {
			return "", err
		}
		formats[dname], err = disk.FormatOf(df)
		df.Close()
		if err != nil {
			return "", err
		}
	}
	return name, nil
}

// freeze hard-links Src's writable disks into a new frozen-N/ (read-only)
// and moves Src onto qcow2 overlays of them; it returns frozen-N's name and
// fills formats with each frozen disk's format.
func (l *Local) freeze(ctx context.Context, sd *os.File, spath string, formats map[string]string) (string, error) {
	_, last, err := latestFrozen(spath)
	if err != nil {
		return "", err
	}
	name := vmdir.FrozenPrefix + strconv.Itoa(last+1)
	fd, err := securefs.MkdirBeneath(sd, name, 0o711)
	if err != nil {
		return "", err
	}
	defer fd.Close()
	for _, dname := range forkedDisks {
		if err := unix.Linkat(int(sd.Fd()), dname, int(fd.Fd()), dname, 0); err != nil {
			return "", fmt.Errorf("link %s: %w", dname, err)
		}
		f, err := securefs.OpenBeneath(fd, dname, unix.O_RDONLY, 0)
		if err != nil {
			return "", err
		}
		format, err := disk.FormatOf(f)
		if err == nil {
			// Read-only from now on: overlays read it, nobody writes it.
			err = f.Chmod(0o400)
		}
		f.Close()
		if err != nil {
			return "", err
		}
		formats[dname] = format
	}
	// Src onto its overlays: made beside, then renamed over the live name.
	for _, dname := range forkedDisks {
		tmp := dname + ".new"
		if err := securefs.RemoveBeneath(sd, tmp); err != nil {
			return "", err
		}
		if err := disk.MakeOverlay(ctx, filepath.Join(spath, tmp), filepath.Join(spath, name, dname), formats[dname]); err != nil {
			return "", err
		}
		if err := unix.Renameat(int(sd.Fd()), tmp, int(sd.Fd()), dname); err != nil {
			return "", fmt.Errorf("switch to overlay %s: %w", dname, err)
		}
	}
	// What the overlays look like now, untouched: the next fork reuses
	// this freeze if they still do.
	stamp, err := stampOf(sd)
	if err != nil {
		return "", err
	}
	f, err := securefs.CreateBeneath(fd, stampName, unix.O_WRONLY, 0o400)
	if err != nil {
		return "", err
	}
	_, err = f.WriteString(stamp)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return name, err
}

// forkInto fills a child's fresh directory cd from Src's (sd).
func (l *Local) forkInto(ctx context.Context, sd, cd *os.File, cpath string, overlay bool, from, formats map[string]string) (string, error) {
	method := ""
	for _, dname := range forkedDisks {
		if overlay {
			if err := disk.MakeOverlay(ctx, filepath.Join(cpath, dname), from[dname], formats[dname]); err != nil {
				return "", err
			}
			continue
		}
		in, err := securefs.OpenBeneath(sd, dname, unix.O_RDONLY, 0)
		if err != nil {
			return "", err
		}
		out, err := securefs.CreateBeneath(cd, dname, unix.O_RDWR, 0o600)
		if err != nil {
			in.Close()
			return "", err
		}
		m, err := disk.CloneFile(out, in)
		in.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", err
		}
		method = string(m)
	}
	// Shared read-only, and the snapshot the child is restored from.
	for _, n := range []string{vmdir.ToolsDiskName, vmdir.SnapshotName, vmdir.SnapshotMemName} {
		if n == vmdir.ToolsDiskName {
			if err := checkRegular(sd, n); errors.Is(err, unix.ENOENT) {
				continue
			}
		}
		if err := unix.Linkat(int(sd.Fd()), n, int(cd.Fd()), n, 0); err != nil {
			return "", fmt.Errorf("link %s: %w", n, err)
		}
	}
	if err := writeLayout(cd); err != nil {
		return "", err
	}
	return method, nil
}

// checkRegular checks that name below d is a regular file.
func checkRegular(d *os.File, name string) error {
	f, err := securefs.OpenBeneath(d, name, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := securefs.Stat(f)
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is not a regular file", name)
	}
	return nil
}
