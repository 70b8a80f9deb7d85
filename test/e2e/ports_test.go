package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/banger-dev/banger/internal/api"
)

// TestVMPorts asks the guest agents of two VMs at once (over the vsock
// device, which banger-vmm carries on virtio-serial) for their listeners:
// both list their SSH server; one also a web server started for the test.
func TestVMPorts(t *testing.T) {
	v := newVMEnv(t)
	cfg, _ := os.ReadFile(v.configFile())
	os.WriteFile(v.configFile(), append([]byte("guest_dns = [\"172.30.0.1\", \"10.9.8.7\"]\n"), cfg...), 0o600)
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
	// <name>.vm resolves through the daemon's DNS server (queried inside the
	// test's netns, where the daemon runs); other names are refused.
	pa := v.show("pa")
	if pa.DNSName != "pa.vm" {
		t.Fatalf("vm show: dns name %q", pa.DNSName)
	}
	var answer, other *dns.Msg
	var qerr error
	inNS(t, v.ns, func() {
		c := &dns.Client{Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("pa.vm.", dns.TypeA)
		if answer, _, qerr = c.Exchange(m, "127.0.0.1:42069"); qerr != nil {
			return
		}
		m.SetQuestion("example.com.", dns.TypeA)
		other, _, qerr = c.Exchange(m, "127.0.0.1:42069")
	})
	if qerr != nil {
		t.Fatalf("dns: %v", qerr)
	}
	if len(answer.Answer) != 1 || answer.Answer[0].(*dns.A).A.String() != pa.IP {
		t.Fatalf("pa.vm: %v (want %s)", answer, pa.IP)
	}
	if other.Rcode != dns.RcodeRefused {
		t.Fatalf("example.com: %v", other)
	}
	// Guests get guest_dns as their nameservers.
	if rc := v.must("vm", "exec", "pa", "--", "cat", "/etc/resolv.conf"); rc != "nameserver 172.30.0.1\nnameserver 10.9.8.7\n" {
		t.Fatalf("guest resolv.conf: %q", rc)
	}

	// The table, for every running VM.
	out := v.must("vm", "ports")
	for _, want := range []string{"pa.vm:22", "pb.vm:22", "http://pa.vm:8080/"} {
		if !strings.Contains(out, want) {
			t.Fatalf("vm ports table lacks %q:\n%s", want, out)
		}
	}
}

// TestDoctor: on this (test) host every check passes or warns; an unknown
// default image fails it with a fix, and the exit status says so.
func TestDoctor(t *testing.T) {
	v := newVMEnv(t)
	var checks []api.DoctorCheck
	if err := json.Unmarshal([]byte(v.must("doctor", "--json")), &checks); err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, c := range checks {
		status[c.Name] = c.Status
		if c.Status == api.DoctorFail {
			t.Errorf("check %s failed: %s (%s)", c.Name, c.Detail, c.Fix)
		}
	}
	for _, n := range []string{"vmm", "qemu", "privileges", "tool mkfs.ext4", "guest agent", ".vm dns"} {
		if status[n] != api.DoctorOK {
			t.Errorf("check %q = %q, want ok", n, status[n])
		}
	}
	v.must("daemon", "stop")
	cfg, _ := os.ReadFile(v.configFile())
	os.WriteFile(v.configFile(), append([]byte("default_image = \"nosuch\"\n"), []byte(strings.Replace(string(cfg), "default_image = \"tiny\"\n", "", 1))...), 0o600)
	r := v.banger("doctor")
	if r.code != 1 || !strings.Contains(r.stdout, "default image") || !strings.Contains(r.stdout, "unknown image \"nosuch\"") {
		t.Fatalf("doctor with a bad default image: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
