package privops

import (
	"context"

	"github.com/banger-dev/banger/internal/client"
)

// Method names served by the root helper.
const (
	MethodEnsureBridge    = "priv.ensure_bridge"
	MethodCreateTap       = "priv.create_tap"
	MethodDeleteTap       = "priv.delete_tap"
	MethodListTaps        = "priv.list_taps"
	MethodAddNAT          = "priv.add_nat"
	MethodRemoveNAT       = "priv.remove_nat"
	MethodPrepareDisks    = "priv.prepare_disks"
	MethodRemoveVMDir     = "priv.remove_vm_dir"
	MethodLaunchVMM       = "priv.launch_vmm"
	MethodKillVMM         = "priv.kill_vmm"
	MethodStatusVMM       = "priv.status_vmm"
	MethodCtrlAltDel      = "priv.ctrl_alt_del"
	MethodClearRuntime    = "priv.clear_runtime"
	MethodReleaseRootfs   = "priv.release_rootfs"
	MethodPauseVMM        = "priv.pause_vmm"
	MethodSnapshotVMM     = "priv.snapshot_vmm"
	MethodRestoreVMM      = "priv.restore_vmm"
	MethodDiscardSnapshot = "priv.discard_snapshot"
	MethodForkDisks       = "priv.fork_disks"
)

// Client reaches the root helper over its socket. The caller's op id (from
// ctx) travels with every call.
type Client struct{ c *client.Client }

var _ Ops = (*Client)(nil)

// NewClient returns a client for the helper socket.
func NewClient(socket string) *Client {
	c := client.New(socket)
	c.Name = "root helper"
	return &Client{c: c}
}

// Socket is the helper's socket path.
func (c *Client) Socket() string { return c.c.Socket }

// Ping checks that the helper answers.
func (c *Client) Ping(ctx context.Context) error { return c.c.Call(ctx, "ping", nil, nil) }

// EnsureBridge implements Ops.
func (c *Client) EnsureBridge(ctx context.Context, r BridgeReq) error {
	return c.c.Call(ctx, MethodEnsureBridge, r, nil)
}

// CreateTap implements Ops.
func (c *Client) CreateTap(ctx context.Context, r TapReq) error {
	return c.c.Call(ctx, MethodCreateTap, r, nil)
}

// DeleteTap implements Ops.
func (c *Client) DeleteTap(ctx context.Context, r TapReq) error {
	return c.c.Call(ctx, MethodDeleteTap, r, nil)
}

// ListTaps implements Ops.
func (c *Client) ListTaps(ctx context.Context) ([]string, error) {
	var out []string
	err := c.c.Call(ctx, MethodListTaps, nil, &out)
	return out, err
}

// AddNAT implements Ops.
func (c *Client) AddNAT(ctx context.Context, r NATReq) error {
	return c.c.Call(ctx, MethodAddNAT, r, nil)
}

// RemoveNAT implements Ops.
func (c *Client) RemoveNAT(ctx context.Context, r NATReq) error {
	return c.c.Call(ctx, MethodRemoveNAT, r, nil)
}

// PrepareDisks implements Ops.
func (c *Client) PrepareDisks(ctx context.Context, r DisksReq) (DisksResp, error) {
	var out DisksResp
	err := c.c.Call(ctx, MethodPrepareDisks, r, &out)
	return out, err
}

// RemoveVMDir implements Ops.
func (c *Client) RemoveVMDir(ctx context.Context, r VMReq) error {
	return c.c.Call(ctx, MethodRemoveVMDir, r, nil)
}

// LaunchVMM implements Ops.
func (c *Client) LaunchVMM(ctx context.Context, r LaunchReq) (LaunchResp, error) {
	var out LaunchResp
	err := c.c.Call(ctx, MethodLaunchVMM, r, &out)
	return out, err
}

// KillVMM implements Ops.
func (c *Client) KillVMM(ctx context.Context, r KillReq) error {
	return c.c.Call(ctx, MethodKillVMM, r, nil)
}

// StatusVMM implements Ops.
func (c *Client) StatusVMM(ctx context.Context, r VMReq) (VMMStatus, error) {
	var out VMMStatus
	err := c.c.Call(ctx, MethodStatusVMM, r, &out)
	return out, err
}

// CtrlAltDel implements Ops.
func (c *Client) CtrlAltDel(ctx context.Context, r VMReq) error {
	return c.c.Call(ctx, MethodCtrlAltDel, r, nil)
}

// PauseVMM implements Ops.
func (c *Client) PauseVMM(ctx context.Context, r PauseReq) error {
	return c.c.Call(ctx, MethodPauseVMM, r, nil)
}

// SnapshotVMM implements Ops.
func (c *Client) SnapshotVMM(ctx context.Context, r VMReq) (SnapshotResp, error) {
	var resp SnapshotResp
	err := c.c.Call(ctx, MethodSnapshotVMM, r, &resp)
	return resp, err
}

// RestoreVMM implements Ops.
func (c *Client) RestoreVMM(ctx context.Context, r RestoreReq) (LaunchResp, error) {
	var resp LaunchResp
	err := c.c.Call(ctx, MethodRestoreVMM, r, &resp)
	return resp, err
}

// ForkDisks implements Ops.
func (c *Client) ForkDisks(ctx context.Context, r ForkReq) (ForkResp, error) {
	var resp ForkResp
	err := c.c.Call(ctx, MethodForkDisks, r, &resp)
	return resp, err
}

// DiscardSnapshot implements Ops.
func (c *Client) DiscardSnapshot(ctx context.Context, r VMReq) error {
	return c.c.Call(ctx, MethodDiscardSnapshot, r, nil)
}

// ReleaseRootfs implements Ops.
func (c *Client) ReleaseRootfs(ctx context.Context, r VMReq) error {
	return c.c.Call(ctx, MethodReleaseRootfs, r, nil)
}

// ClearRuntime implements Ops.
func (c *Client) ClearRuntime(ctx context.Context, r VMReq) error {
	return c.c.Call(ctx, MethodClearRuntime, r, nil)
}
