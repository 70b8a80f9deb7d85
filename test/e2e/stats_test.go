package e2e

import (
	"encoding/json"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// TestVMStatsMoveWithTheGuest ([P12]): vm stats --json reports a running
// VM's host and guest figures; when the guest allocates 100 MiB (a tmpfs
// file: kept resident), its memory used and the VMM's resident memory on
// the host both grow by most of it, and the work disk's use grows when the
// guest writes to it.
func TestVMStatsMoveWithTheGuest(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "st", "--memory", "512")
	stats := func() api.VMStats {
		t.Helper()
		var st []api.VMStats
		if err := json.Unmarshal([]byte(v.must("vm", "stats", "st", "--json")), &st); err != nil || len(st) != 1 {
			t.Fatalf("vm stats --json: %v %+v", err, st)
		}
		if st[0].Error != "" {
			t.Fatalf("vm stats: %s", st[0].Error)
		}
		return st[0]
	}
	before := stats()
	if before.GuestMemTotalBytes < 256<<20 || before.GuestMemUsedBytes <= 0 || before.VMMRSSBytes <= 0 || len(before.Disks) != 2 {
		t.Fatalf("first figures: %+v", before)
	}
	v.must("vm", "exec", "st", "--", "sh", "-c",
		"mkdir -p /run/fill && mount -t tmpfs -o size=200m tmpfs /run/fill && dd if=/dev/urandom of=/run/fill/blob bs=1M count=100 2>/dev/null && dd if=/dev/zero of=/root/disk-blob bs=1M count=20 2>/dev/null && sync")
	after := stats()
	t.Logf("before %+v\nafter  %+v", before, after)
	const mib = 1 << 20
	if d := after.GuestMemUsedBytes - before.GuestMemUsedBytes; d < 80*mib {
		t.Errorf("guest memory used grew by %d MiB, want about 100", d/mib)
	}
	if d := after.VMMRSSBytes - before.VMMRSSBytes; d < 50*mib {
		t.Errorf("the VMM's resident memory grew by %d MiB, want most of 100", d/mib)
	}
	work := func(s api.VMStats) int64 {
		for _, d := range s.Disks {
			if d.Path == "/root" {
				return d.UsedBytes
			}
		}
		t.Fatalf("no /root disk in %+v", s.Disks)
		return 0
	}
	if d := work(after) - work(before); d < 15*mib {
		t.Errorf("the work disk's use grew by %d MiB, want about 20", d/mib)
	}
	if after.NetRxBytes <= before.NetRxBytes || after.NetTxBytes <= before.NetTxBytes {
		t.Errorf("network counters did not move with the SSH session: %d/%d → %d/%d", before.NetRxBytes, before.NetTxBytes, after.NetRxBytes, after.NetTxBytes)
	}
	if out := v.must("vm", "stats"); len(out) == 0 {
		t.Error("vm stats printed nothing")
	}
}
