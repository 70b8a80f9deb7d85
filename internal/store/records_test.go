package store

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
)

// oldRuntimeJSON is a runtime_json value exactly as banger wrote it before
// the store had its own record type (json.Marshal of api.VMRuntime), with
// every field set.
const oldRuntimeJSON = `{"vmm":"/usr/local/lib/banger/banger-vmm","vmm_kind":"banger-vmm","pid":4242,"tap":"bgtap0123abcd","mac":"02:fc:ac:1e:00:05","dir":"/var/lib/banger-vms/0123abcd","api_sock":"/var/lib/banger-vms/0123abcd/api.sock","serial_log":"/var/lib/banger-vms/0123abcd/serial.log","clone_method":"reflink","started_at":"2025-01-02T03:04:05Z","stopped_at":"2025-01-02T04:05:06Z","workspace":{"host_path":"/home/u/src/app","guest_path":"/root/app","head_commit":"abc123","mode":"shallow","prepared_at":"2025-01-02T03:05:00Z"},"stop_reason":"the VMM exited","last_error":"boom","snapshot_bytes":123456789,"parked_at":"2025-01-02T03:06:00Z","fork_of":"parent01","disk_parents":["parent01","grand001"],"snapshot_tap":"bgtapparent0","needs_identity":true,"template":"k3y","start":"warm","started_from":"warm-0123456789ab"}`

// oldRuntime is oldRuntimeJSON as a record.
var oldRuntime = RuntimeRecord{
	VMM: "/usr/local/lib/banger/banger-vmm", VMMKind: "banger-vmm", PID: 4242, Tap: "bgtap0123abcd", MAC: "02:fc:ac:1e:00:05",
	Dir: "/var/lib/banger-vms/0123abcd", APISock: "/var/lib/banger-vms/0123abcd/api.sock", SerialLog: "/var/lib/banger-vms/0123abcd/serial.log",
	CloneMethod: "reflink", StartedAt: "2025-01-02T03:04:05Z", StoppedAt: "2025-01-02T04:05:06Z",
	Workspace:  &WorkspaceRecord{HostPath: "/home/u/src/app", GuestPath: "/root/app", HeadCommit: "abc123", Mode: "shallow", PreparedAt: "2025-01-02T03:05:00Z"},
	StopReason: "the VMM exited", LastError: "boom", SnapshotBytes: 123456789, ParkedAt: "2025-01-02T03:06:00Z",
	ForkOf: "parent01", DiskParents: []string{"parent01", "grand001"}, SnapshotTap: "bgtapparent0", NeedsIdentity: true,
	Template: "k3y", Start: "warm", StartedFrom: "warm-0123456789ab",
}

func recordsStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	if err := s.PutKernel(ctx, KernelRecord{ID: "k", Name: "k", Vmlinux: "/k"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutImage(ctx, ImageRecord{ID: "img", Name: "img", Rootfs: "/r", KernelID: "k"}); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestOldRuntimeRowsLoad: rows written before RuntimeRecord existed (the
// full encoding, an older subset of it, and the column's default '{}') load
// with every value in place.
func TestOldRuntimeRowsLoad(t *testing.T) {
	s := recordsStore(t)
	ctx := context.Background()
	rows := []struct {
		id, runtime string
		want        RuntimeRecord
	}{
		{"full", oldRuntimeJSON, oldRuntime},
		{"older", `{"pid":7,"tap":"bgtap11111111","clone_method":"sparse-copy","workspace":{"host_path":"/h","guest_path":"/g","head_commit":"c","mode":"full","prepared_at":"t"}}`,
			RuntimeRecord{PID: 7, Tap: "bgtap11111111", CloneMethod: "sparse-copy", Workspace: &WorkspaceRecord{HostPath: "/h", GuestPath: "/g", HeadCommit: "c", Mode: "full", PreparedAt: "t"}}},
		{"empty", `{}`, RuntimeRecord{}},
	}
	for i, r := range rows {
		if _, err := s.DB.Exec(`INSERT INTO vms(id, name, image_id, state, vcpu, memory_mib, disk_bytes, nat, guest_ip, created_at, updated_at, runtime_json)
			VALUES(?, ?, 'img', 'stopped', 2, 512, 1073741824, 1, ?, 'c', 'u', ?)`, r.id, "vm-"+r.id, fmt.Sprintf("10.0.0.%d", i+2), r.runtime); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range rows {
		got, err := s.GetVM(ctx, "vm-"+r.id)
		if err != nil {
			t.Fatal(err)
		}
		want := VMRecord{ID: r.id, Name: "vm-" + r.id, ImageID: "img", State: "stopped", VCPU: 2, MemoryMiB: 512, DiskBytes: 1 << 30,
			NAT: true, GuestIP: fmt.Sprintf("10.0.0.%d", i+2), CreatedAt: "c", UpdatedAt: "u", Runtime: r.want}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("row %s:\n got  %+v\n want %+v", r.id, got, want)
		}
	}
}

// TestRuntimeEncodingUnchanged: a record is written in exactly the old
// encoding, so a binary of the previous release reads it too.
func TestRuntimeEncodingUnchanged(t *testing.T) {
	s := recordsStore(t)
	ctx := context.Background()
	rec := VMRecord{ID: "a", Name: "a", ImageID: "img", State: "running", VCPU: 1, MemoryMiB: 128, DiskBytes: 1, GuestIP: "10.0.0.2", CreatedAt: "c", UpdatedAt: "u", Runtime: oldRuntime}
	if err := s.InsertVM(ctx, rec); err != nil {
		t.Fatal(err)
	}
	var raw string
	if err := s.DB.QueryRow(`SELECT runtime_json FROM vms WHERE id='a'`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if raw != oldRuntimeJSON {
		t.Fatalf("InsertVM wrote\n %s\nwant\n %s", raw, oldRuntimeJSON)
	}
	rec.Runtime = RuntimeRecord{Tap: "bgtap0123abcd"}
	if err := s.UpdateVM(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.DB.QueryRow(`SELECT runtime_json FROM vms WHERE id='a'`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if raw != `{"tap":"bgtap0123abcd"}` {
		t.Fatalf("UpdateVM wrote %s", raw)
	}
}
