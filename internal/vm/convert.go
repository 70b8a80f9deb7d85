package vm

import (
	"context"
	"maps"
	"slices"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// The store keeps its own record types; the wire has api's. These are the
// only conversions between them (convert_test.go checks that every field
// crosses, both ways). The labels the store keeps in the runtime record are
// api.VM's own field on the wire (ToAPI).

// ToAPI converts a record for the wire.
func (s *Service) ToAPI(ctx context.Context, r store.VMRecord) api.VM {
	img := r.ImageID
	if im, err := s.Store.GetImage(ctx, r.ImageID); err == nil {
		img = im.Name
	}
	return api.VM{ID: r.ID, Name: r.Name, Image: img, State: r.State, VCPU: r.VCPU, MemoryMiB: r.MemoryMiB,
		DiskBytes: r.DiskBytes, NAT: r.NAT, IP: r.GuestIP, DNSName: r.Name + ".vm", CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		Labels: maps.Clone(r.Runtime.Labels), Runtime: runtimeToAPI(r.Runtime)}
}

// runtimeToAPI is a VM's stored runtime state as the wire shows it.
func runtimeToAPI(r store.RuntimeRecord) api.VMRuntime {
	return api.VMRuntime{
		VMM: r.VMM, VMMKind: r.VMMKind, PID: r.PID, Tap: r.Tap, MAC: r.MAC, Dir: r.Dir, APISock: r.APISock,
		SerialLog: r.SerialLog, CloneMethod: r.CloneMethod, StartedAt: r.StartedAt, StoppedAt: r.StoppedAt,
		Workspace:  workspaceToAPI(r.Workspace),
		StopReason: r.StopReason, LastError: r.LastError, SnapshotBytes: r.SnapshotBytes, ParkedAt: r.ParkedAt,
		ForkOf: r.ForkOf, DiskParents: slices.Clone(r.DiskParents), SnapshotTap: r.SnapshotTap,
		NeedsIdentity: r.NeedsIdentity, Template: r.Template, Start: r.Start, StartedFrom: r.StartedFrom,
	}
}

// runtimeFromAPI is the inverse of runtimeToAPI.
func runtimeFromAPI(r api.VMRuntime) store.RuntimeRecord {
	return store.RuntimeRecord{
		VMM: r.VMM, VMMKind: r.VMMKind, PID: r.PID, Tap: r.Tap, MAC: r.MAC, Dir: r.Dir, APISock: r.APISock,
		SerialLog: r.SerialLog, CloneMethod: r.CloneMethod, StartedAt: r.StartedAt, StoppedAt: r.StoppedAt,
		Workspace:  workspaceFromAPI(r.Workspace),
		StopReason: r.StopReason, LastError: r.LastError, SnapshotBytes: r.SnapshotBytes, ParkedAt: r.ParkedAt,
		ForkOf: r.ForkOf, DiskParents: slices.Clone(r.DiskParents), SnapshotTap: r.SnapshotTap,
		NeedsIdentity: r.NeedsIdentity, Template: r.Template, Start: r.Start, StartedFrom: r.StartedFrom,
	}
}

// workspaceToAPI is a stored workspace as the wire shows it (nil: none).
func workspaceToAPI(w *store.WorkspaceRecord) *api.Workspace {
	if w == nil {
		return nil
	}
	return &api.Workspace{HostPath: w.HostPath, GuestPath: w.GuestPath, HeadCommit: w.HeadCommit, Mode: w.Mode, PreparedAt: w.PreparedAt}
}

// workspaceFromAPI is the inverse of workspaceToAPI.
func workspaceFromAPI(w *api.Workspace) *store.WorkspaceRecord {
	if w == nil {
		return nil
	}
	return &store.WorkspaceRecord{HostPath: w.HostPath, GuestPath: w.GuestPath, HeadCommit: w.HeadCommit, Mode: w.Mode, PreparedAt: w.PreparedAt}
}
