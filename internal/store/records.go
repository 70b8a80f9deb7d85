package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"

	"github.com/banger-dev/banger/internal/errdefs"
)

// VMRecord is a row of vms.
type VMRecord struct {
	ID        string
	Name      string
	ImageID   string
	State     string
	VCPU      int
	MemoryMiB int
	DiskBytes int64
	NAT       bool
	GuestIP   string
	CreatedAt string
	UpdatedAt string
	Runtime   RuntimeRecord
}

// RuntimeRecord is a VM's runtime state, kept as JSON in vms.runtime_json.
// The JSON names are that column's format: a name is never changed or
// reused (rows written by older banger must load), and a new field is
// omitempty so older rows read as its zero value. The wire has its own
// type (api.VMRuntime); the VM service converts between them.
type RuntimeRecord struct {
	VMM         string `json:"vmm,omitempty"`      // binary path
	VMMKind     string `json:"vmm_kind,omitempty"` // "firecracker" or "banger-vmm"
	PID         int    `json:"pid,omitempty"`
	Tap         string `json:"tap,omitempty"`
	MAC         string `json:"mac,omitempty"`
	Dir         string `json:"dir,omitempty"`
	APISock     string `json:"api_sock,omitempty"`
	SerialLog   string `json:"serial_log,omitempty"`
	CloneMethod string `json:"clone_method,omitempty"` // set once the disks are complete
	StartedAt   string `json:"started_at,omitempty"`
	StoppedAt   string `json:"stopped_at,omitempty"`
	// Workspace is the repository last prepared in the VM, if any.
	Workspace *WorkspaceRecord `json:"workspace,omitempty"`
	// StopReason says why a VM is not running when banger did not stop it.
	StopReason string `json:"stop_reason,omitempty"`
	LastError  string `json:"last_error,omitempty"`
	// SnapshotBytes is the parked VM's snapshot on disk; ParkedAt when it
	// was parked.
	SnapshotBytes int64  `json:"snapshot_bytes,omitempty"`
	ParkedAt      string `json:"parked_at,omitempty"`
	// ForkOf is the id of the VM this one was forked from.
	ForkOf string `json:"fork_of,omitempty"`
	// DiskParents are the ids of the VMs whose frozen disks back this VM's.
	DiskParents []string `json:"disk_parents,omitempty"`
	// SnapshotTap is the tap the VM's snapshot names when it is not the
	// VM's own (a fork's is its parent's).
	SnapshotTap string `json:"snapshot_tap,omitempty"`
	// NeedsIdentity: a fork that has not yet taken its own identity.
	NeedsIdentity bool `json:"needs_identity,omitempty"`
	// Template, on a warm-start template, is its key.
	Template string `json:"template,omitempty"`
	// Start is "warm" (from the template StartedFrom) or "cold".
	Start       string `json:"start,omitempty"`
	StartedFrom string `json:"started_from,omitempty"`
	// Labels are the VM's user labels (api.VM.Labels; kept here so that no
	// schema change is needed, and an older banger reading the row skips them).
	Labels map[string]string `json:"labels,omitempty"`
}

// WorkspaceRecord is the workspace last prepared in a VM (within
// runtime_json; the same format rules apply).
type WorkspaceRecord struct {
	HostPath   string `json:"host_path"`
	GuestPath  string `json:"guest_path"`
	HeadCommit string `json:"head_commit"`
	Mode       string `json:"mode"`
	PreparedAt string `json:"prepared_at"`
}

// ImageRecord is a row of images joined with its kernel.
type ImageRecord struct {
	ID        string
	Name      string
	Rootfs    string
	KernelID  string
	Managed   bool
	CreatedAt string
	Meta      map[string]string
}

// KernelRecord is a row of kernels.
type KernelRecord struct {
	ID        string
	Name      string
	Version   string
	Vmlinux   string
	Vmlinuz   string
	Initrd    string
	CreatedAt string
	Meta      map[string]string // source, sha256, modules dir, managed ("1" = files under the state dir)
}

func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

const vmCols = `id, name, image_id, state, vcpu, memory_mib, disk_bytes, nat, guest_ip, created_at, updated_at, runtime_json`

func scanVM(sc interface{ Scan(...any) error }) (VMRecord, error) {
	var r VMRecord
	var rt string
	var nat int
	if err := sc.Scan(&r.ID, &r.Name, &r.ImageID, &r.State, &r.VCPU, &r.MemoryMiB, &r.DiskBytes, &nat, &r.GuestIP, &r.CreatedAt, &r.UpdatedAt, &rt); err != nil {
		return r, err
	}
	r.NAT = nat != 0
	_ = json.Unmarshal([]byte(rt), &r.Runtime)
	return r, nil
}

// InsertVM adds a VM. A duplicate name or IP is already_exists.
func (s *Store) InsertVM(ctx context.Context, r VMRecord) error {
	rt, _ := json.Marshal(r.Runtime)
	_, err := s.DB.ExecContext(ctx, `INSERT INTO vms(`+vmCols+`) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)`,
		r.ID, r.Name, r.ImageID, r.State, r.VCPU, r.MemoryMiB, r.DiskBytes, boolInt(r.NAT), r.GuestIP, r.CreatedAt, r.UpdatedAt, string(rt))
	if isUnique(err) {
		if strings.Contains(err.Error(), "vms.name") {
			return errdefs.AlreadyExistsf("a VM named %q already exists", r.Name)
		}
		return errdefs.AlreadyExistsf("guest IP %s is already taken", r.GuestIP)
	}
	return err
}

// UpdateVM writes every mutable column of a VM.
func (s *Store) UpdateVM(ctx context.Context, r VMRecord) error {
	rt, _ := json.Marshal(r.Runtime)
	res, err := s.DB.ExecContext(ctx, `UPDATE vms SET state=?, vcpu=?, memory_mib=?, disk_bytes=?, nat=?, guest_ip=?, updated_at=?, runtime_json=? WHERE id=?`,
		r.State, r.VCPU, r.MemoryMiB, r.DiskBytes, boolInt(r.NAT), r.GuestIP, r.UpdatedAt, string(rt), r.ID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errdefs.NotFoundf("no VM with id %s", r.ID)
	}
	return nil
}

// GetVM finds a VM by name, or by id.
func (s *Store) GetVM(ctx context.Context, nameOrID string) (VMRecord, error) {
	r, err := scanVM(s.DB.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms WHERE name=? OR id=? ORDER BY name=? DESC LIMIT 1`, nameOrID, nameOrID, nameOrID))
	if errors.Is(err, sql.ErrNoRows) {
		return r, errdefs.NotFoundf("no VM named %q (see 'banger vm list')", nameOrID)
	}
	return r, err
}

// ListVMs returns every VM, by creation time.
func (s *Store) ListVMs(ctx context.Context) ([]VMRecord, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT `+vmCols+` FROM vms ORDER BY created_at, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []VMRecord
	for rows.Next() {
		r, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeleteVM removes a VM row.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	_, err := s.DB.ExecContext(ctx, `DELETE FROM vms WHERE id=?`, id)
	return err
}

// UsedIPs lists the guest IPs in use.
func (s *Store) UsedIPs(ctx context.Context) (map[string]bool, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT guest_ip FROM vms WHERE guest_ip != ''`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var ip string
		if err := rows.Scan(&ip); err != nil {
			return nil, err
		}
		out[ip] = true
	}
	return out, rows.Err()
}

// PutKernel inserts or replaces a kernel by name.
func (s *Store) PutKernel(ctx context.Context, k KernelRecord) error {
	meta, _ := json.Marshal(k.Meta)
	_, err := s.DB.ExecContext(ctx, `INSERT INTO kernels(id, name, version, vmlinux, vmlinuz, initrd, created_at, meta_json) VALUES(?,?,?,?,?,?,?,?)
		ON CONFLICT(name) DO UPDATE SET version=excluded.version, vmlinux=excluded.vmlinux, vmlinuz=excluded.vmlinuz, initrd=excluded.initrd, meta_json=excluded.meta_json`,
		k.ID, k.Name, k.Version, k.Vmlinux, k.Vmlinuz, k.Initrd, k.CreatedAt, string(meta))
	return err
}

const kernelCols = `id, name, version, vmlinux, vmlinuz, initrd, created_at, meta_json`

func scanKernel(sc interface{ Scan(...any) error }) (KernelRecord, error) {
	var k KernelRecord
	var meta string
	err := sc.Scan(&k.ID, &k.Name, &k.Version, &k.Vmlinux, &k.Vmlinuz, &k.Initrd, &k.CreatedAt, &meta)
	_ = json.Unmarshal([]byte(meta), &k.Meta)
	return k, err
}

// GetKernel finds a kernel by id or name.
func (s *Store) GetKernel(ctx context.Context, idOrName string) (KernelRecord, error) {
	k, err := scanKernel(s.DB.QueryRowContext(ctx, `SELECT `+kernelCols+` FROM kernels WHERE id=? OR name=? LIMIT 1`, idOrName, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return k, errdefs.NotFoundf("no kernel %q (see 'banger kernel list')", idOrName)
	}
	return k, err
}

// ListKernels returns every kernel.
func (s *Store) ListKernels(ctx context.Context) ([]KernelRecord, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT `+kernelCols+` FROM kernels ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []KernelRecord
	for rows.Next() {
		k, err := scanKernel(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// ImagesUsingKernel names the images that boot kernel id.
func (s *Store) ImagesUsingKernel(ctx context.Context, kernelID string) ([]string, error) {
	return s.names(ctx, `SELECT name FROM images WHERE kernel_id=? ORDER BY name`, kernelID)
}

// DeleteKernel removes a kernel row.
func (s *Store) DeleteKernel(ctx context.Context, id string) error {
	_, err := s.DB.ExecContext(ctx, `DELETE FROM kernels WHERE id=?`, id)
	return err
}

// UpdateImage rewrites an image row (rootfs, kernel, managed, meta).
func (s *Store) UpdateImage(ctx context.Context, im ImageRecord) error {
	meta, _ := json.Marshal(im.Meta)
	_, err := s.DB.ExecContext(ctx, `UPDATE images SET rootfs=?, kernel_id=?, managed=?, meta_json=? WHERE id=?`,
		im.Rootfs, nullable(im.KernelID), boolInt(im.Managed), string(meta), im.ID)
	return err
}

// PutImage inserts an image; a duplicate name is already_exists.
func (s *Store) PutImage(ctx context.Context, im ImageRecord) error {
	meta, _ := json.Marshal(im.Meta)
	_, err := s.DB.ExecContext(ctx, `INSERT INTO images(id, name, rootfs, kernel_id, managed, created_at, meta_json) VALUES(?,?,?,?,?,?,?)`,
		im.ID, im.Name, im.Rootfs, nullable(im.KernelID), boolInt(im.Managed), im.CreatedAt, string(meta))
	if isUnique(err) {
		return errdefs.AlreadyExistsf("an image named %q already exists", im.Name)
	}
	return err
}

const imageCols = `id, name, rootfs, COALESCE(kernel_id, ''), managed, created_at, meta_json`

func scanImage(sc interface{ Scan(...any) error }) (ImageRecord, error) {
	var im ImageRecord
	var managed int
	var meta string
	err := sc.Scan(&im.ID, &im.Name, &im.Rootfs, &im.KernelID, &managed, &im.CreatedAt, &meta)
	im.Managed = managed != 0
	_ = json.Unmarshal([]byte(meta), &im.Meta)
	return im, err
}

// GetImage finds an image by name or id.
func (s *Store) GetImage(ctx context.Context, nameOrID string) (ImageRecord, error) {
	im, err := scanImage(s.DB.QueryRowContext(ctx, `SELECT `+imageCols+` FROM images WHERE name=? OR id=? LIMIT 1`, nameOrID, nameOrID))
	if errors.Is(err, sql.ErrNoRows) {
		return im, errdefs.NotFoundf("no image named %q (see 'banger image list')", nameOrID)
	}
	return im, err
}

// ListImages returns every image.
func (s *Store) ListImages(ctx context.Context) ([]ImageRecord, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT `+imageCols+` FROM images ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ImageRecord
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, rows.Err()
}

// VMsUsingImage names the VMs built from image id.
func (s *Store) VMsUsingImage(ctx context.Context, imageID string) ([]string, error) {
	return s.names(ctx, `SELECT name FROM vms WHERE image_id=? ORDER BY name`, imageID)
}

func (s *Store) names(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := s.DB.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// DeleteImage removes an image row.
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	_, err := s.DB.ExecContext(ctx, `DELETE FROM images WHERE id=?`, id)
	return err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
