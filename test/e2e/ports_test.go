package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// TestVMPorts asks the guest agents of two VMs at once (over the vsock
// device, which banger-vmm carries on virtio-serial) for their listeners:
// both list their SSH server; one also a web server started for the test.
func TestVMPorts(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "pa")
	v.must("vm", "create", "--name", "pb")
	v.must("vm", "exec", "pa", "--", "sh", "-c", "mkdir -p /tmp/www && httpd -p 8080 -h /tmp/www")

	var res []api.VMPorts
	if err := json.Unmarshal([]byte(v.must("vm", "ports", "pa", "pb", "--json")), &res); err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 {
		t.Fatalf("%d results: %+v", len(res), res)
	}
	find := func(p api.VMPorts, port int) *api.PortListener {
		for i, l := range p.Listeners {
			if l.Port == port && strings.HasPrefix(l.Proto, "tcp") {
				return &p.Listeners[i]
			}
		}
		return nil
	}
	for _, p := range res {
		if p.Error != "" {
			t.Fatalf("%s: %s", p.Name, p.Error)
		}
		ssh := find(p, 22)
		if ssh == nil || ssh.Process != "dropbear" || ssh.Endpoint != p.Name+".vm:22" || ssh.URL != "" {
			t.Fatalf("%s: no sshd listener: %+v", p.Name, p.Listeners)
		}
	}
	web := find(res[0], 8080)
	if res[0].Name != "pa" || web == nil || web.Process != "httpd" || web.URL != "http://pa.vm:8080/" {
		t.Fatalf("pa's web server: %+v", res[0].Listeners)
	}
	if find(res[1], 8080) != nil {
		t.Fatalf("pb lists pa's port: %+v", res[1].Listeners)
	}
	// The table, for every running VM.
	out := v.must("vm", "ports")
	for _, want := range []string{"pa.vm:22", "pb.vm:22", "http://pa.vm:8080/"} {
		if !strings.Contains(out, want) {
			t.Fatalf("vm ports table lacks %q:\n%s", want, out)
		}
	}
}
