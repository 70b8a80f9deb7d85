package fcvmm

import (
	"errors"
	"os"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"golang.org/x/sys/unix"
)

// driveReq is the SDK's Drive model plus v1.14.1's vhost-user "socket".
type driveReq struct {
	models.Drive
	Socket *string `json:"socket"`
}

// putDrive is PUT /drives/{drive_id}: the root drive goes first, the
// others keep their order; the file is opened now (open).
func (v *vmm) putDrive(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req driveReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	// Firecracker v1.14 requires only drive_id and is_root_device.
	if req.DriveID == nil {
		return 0, nil, deserializeError("missing field `drive_id`")
	}
	if req.IsRootDevice == nil {
		return 0, nil, deserializeError("missing field `is_root_device`")
	}
	if req.IsReadOnly == nil {
		f := false
		req.IsReadOnly = &f
	}
	if req.PathOnHost == nil && req.Socket == nil {
		return 0, nil, deserializeError("missing field `path_on_host`")
	}
	if e := validateModel(&req.Drive, "path_on_host"); e != nil {
		return 0, nil, e
	}
	if id != *req.DriveID {
		return 0, nil, errIDMismatch
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	if req.Socket != nil {
		return 0, nil, notSupported("a vhost-user block device")
	}
	d := &driveCfg{
		id: id, path: *req.PathOnHost, partuuid: req.Partuuid, root: *req.IsRootDevice, readOnly: *req.IsReadOnly,
		cacheType: "Unsafe", ioEngine: "Sync", rateLimiter: req.RateLimiter,
	}
	if req.CacheType != nil {
		d.cacheType = *req.CacheType
	}
	if req.IoEngine != nil {
		d.ioEngine = *req.IoEngine
	}
	pos := -1
	for i, o := range v.cfg.drives {
		if o.id == id {
			pos = i
		}
	}
	hasRoot := len(v.cfg.drives) > 0 && v.cfg.drives[0].root
	if d.root && hasRoot && pos != 0 {
		return 0, nil, badRequest("Drive config error: A root block device already exists!")
	}
	if err := d.open(); err != nil {
		return 0, nil, badRequest("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: %s %s", rustIOError(err), d.path)
	}
	switch {
	case pos < 0 && d.root:
		v.cfg.drives = append([]*driveCfg{d}, v.cfg.drives...)
	case pos < 0:
		v.cfg.drives = append(v.cfg.drives, d)
	default:
		v.cfg.drives[pos].close()
		v.cfg.drives[pos] = d
		if pos != 0 && d.root {
			v.cfg.drives[0], v.cfg.drives[pos] = v.cfg.drives[pos], v.cfg.drives[0]
		}
	}
	return 0, nil, nil
}

// open opens the backing file the way Firecracker does (read-only when the
// drive is), plus the read-only descriptor QEMU probes a writable image
// with, and decides the format from the opened file's user.banger.format
// attribute (never from its content). A relative path is resolved against
// the VMM's working directory, as in Firecracker, and kept as given. This is
// the only place a drive file is opened: PUT /drives, --config-file and PUT
// /snapshot/load all come here.
func (d *driveCfg) open() error {
	if !d.readOnly {
		f, err := os.OpenFile(d.path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		d.rw = f
	}
	f, err := os.Open(d.path)
	if err != nil {
		d.close()
		return err
	}
	d.ro = f
	if err := d.checkFormat(); err != nil {
		d.close()
		return err
	}
	return nil
}

// checkFormat reads the format attribute on the opened file and, for a
// qcow2 image, follows its backing chain (see qcow2Chain).
func (d *driveCfg) checkFormat() error {
	if d.rw != nil && !sameFile(d.rw, d.ro) {
		// Both descriptors go to QEMU as one drive: they must be one file.
		return errors.New("the file was replaced while it was being opened")
	}
	format, err := driveFormat(d.ro)
	if err != nil {
		return err
	}
	d.format, d.backing = format, nil
	if format == formatQcow2 {
		if d.backing, err = qcow2Chain(d.ro); err != nil {
			return err
		}
	}
	return nil
}

// sameFile reports whether two descriptors are the same inode.
func sameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(int(a.Fd()), &sa) != nil || unix.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// patchDrive is PATCH /drives/{drive_id} after boot: the rate limiter (a
// new backing file is not supported).
func (v *vmm) patchDrive(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req models.PartialDrive
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if id != *req.DriveID {
		return 0, nil, errIDMismatch
	}
	if !v.started {
		return 0, nil, errPreBoot
	}
	var d *driveCfg
	for _, o := range v.cfg.drives {
		if o.id == id {
			d = o
		}
	}
	if d == nil {
		return 0, nil, badRequest("Drive config error: Unable to patch the block device: Invalid block device ID! Please verify the request arguments.")
	}
	if req.PathOnHost != "" && req.PathOnHost != d.path {
		return 0, nil, notSupported("changing a drive's backing file after boot")
	}
	d.rateLimiter = req.RateLimiter // accepted; banger-vmm does not rate-limit
	return 0, nil, nil
}
