package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// warmEnv is a VM env whose config starts VMs warm (the shipped default;
// the harness's is cold so other tests never build templates).
func warmEnv(t *testing.T) *vmEnv {
	t.Helper()
	v := newVMEnv(t)
	cfg, err := os.ReadFile(v.configFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.configFile(), []byte(strings.Replace(string(cfg), `start = "cold"`, `start = "warm"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	return v
}

// identityScript prints the guest's hostname, address and a digest of the
// SSH host keys its server serves.
const identityScript = `hostname; ip -4 -o addr show dev eth0 | awk '{print $4}'; ` +
	`for f in /etc/dropbear/*_host_key /run/dropbear/*_host_key; do [ -f "$f" ] && dropbearkey -y -f "$f"; done 2>/dev/null | ` +
	`grep -E '^(ssh-|ecdsa-)' | cut -d' ' -f2 | sort | md5sum | cut -c1-16; `

// TestWarmStartFromATemplate ([P10]): 'image warm' makes tiny's template;
// two 'vm run --rm' at once start from it with distinct IPs, hostnames and
// host keys, and exit with their commands' codes (42, and 137 for a command
// killed with SIGKILL); 'vm show' says warm (and cold with --cold).
func TestWarmStartFromATemplate(t *testing.T) {
	v := warmEnv(t)
	out := v.must("image", "warm", "tiny")
	f := strings.Fields(out)
	if len(f) < 3 || f[1] != "template" || !strings.HasPrefix(f[2], "warm-") {
		t.Fatalf("image warm: %q", out)
	}
	tmpl := f[2]
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("the template shows in vm list: %s", vms)
	}

	type res struct {
		code   int
		fields []string
		err    string
	}
	var wg sync.WaitGroup
	results := make([]res, 2)
	t0 := time.Now()
	for i, tail := range []string{"exit 42", "kill -9 $$"} {
		wg.Add(1)
		go func(i int, tail string) {
			defer wg.Done()
			r := v.banger("vm", "run", "--rm", "--", "sh", "-c", identityScript+tail)
			results[i] = res{r.code, strings.Fields(r.stdout), r.stderr}
		}(i, tail)
	}
	wg.Wait()
	t.Logf("two warm vm run --rm at once: %v", time.Since(t0).Round(time.Millisecond))
	if results[0].code != 42 || results[1].code != 137 {
		t.Fatalf("exit codes %d and %d, want 42 and 137\n%s\n%s", results[0].code, results[1].code, results[0].err, results[1].err)
	}
	for i := range results {
		if len(results[i].fields) != 3 {
			t.Fatalf("run %d printed %q", i, results[i].fields)
		}
	}
	for k, what := range []string{"hostname", "address", "host keys"} {
		if results[0].fields[k] == results[1].fields[k] {
			t.Errorf("both warm VMs have the %s %s", what, results[0].fields[k])
		}
	}

	v.must("vm", "create", "--name", "w1")
	if s := v.show("w1"); s.Runtime.Start != "warm" || s.Runtime.StartedFrom != tmpl {
		t.Fatalf("vm show w1: start %q from %q, want warm from %s", s.Runtime.Start, s.Runtime.StartedFrom, tmpl)
	}
	if !strings.Contains(v.must("vm", "show", "w1"), "warm, from template "+tmpl) {
		t.Fatal("vm show does not say the VM started warm")
	}
	v.must("vm", "create", "--name", "c1", "--cold")
	if s := v.show("c1"); s.Runtime.Start != "cold" {
		t.Fatalf("vm create --cold: start %q", s.Runtime.Start)
	}
	v.must("vm", "delete", "w1")
	v.must("vm", "delete", "c1")
}

// TestWarmTemplateInvalidation ([P10]): a corrupted template (its memory
// file truncated) still runs the command, cold, with one warning, and the
// bad template is gone; after the image changes, the next start is cold, a
// new template replaces the old, and 'image cache prune' removes the stale
// one.
func TestWarmTemplateInvalidation(t *testing.T) {
	v := warmEnv(t)
	tmpl := strings.Fields(v.must("image", "warm", "tiny"))[2]
	old := v.show(tmpl)
	mem := old.Runtime.Dir + "/vm.mem"
	fi, err := os.Stat(mem)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(mem, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	r := v.banger("vm", "run", "--rm", "--", "sh", "-c", "exit 7")
	if r.code != 7 {
		t.Fatalf("vm run with a corrupted template: exit %d\n%s", r.code, r.stderr)
	}
	if n := strings.Count(r.stderr, "warning:"); n != 1 || !strings.Contains(r.stderr, tmpl) {
		t.Fatalf("want one warning naming %s, got:\n%s", tmpl, r.stderr)
	}
	// The bad template is gone (a new one of the same shape may be being
	// made in the background: it is another VM).
	if got := v.banger("vm", "show", tmpl, "--json"); got.code == 0 {
		var now api.VM
		json.Unmarshal([]byte(got.stdout), &now)
		if now.ID == old.ID {
			t.Fatalf("the corrupted template is still there: %s %s", now.State, now.ID)
		}
	}

	// The image changes: its template no longer matches.
	tmpl = strings.Fields(v.must("image", "warm", "tiny"))[2] // waits for the background build
	var img struct {
		Rootfs string `json:"rootfs"`
	}
	json.Unmarshal([]byte(v.must("image", "show", "tiny", "--json")), &img)
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(img.Rootfs, later, later); err != nil {
		t.Fatal(err)
	}
	v.must("vm", "create", "--name", "after")
	if s := v.show("after"); s.Runtime.Start != "cold" {
		t.Fatalf("after the image changed the VM started %s (from %s)", s.Runtime.Start, s.Runtime.StartedFrom)
	}
	fresh := strings.Fields(v.must("image", "warm", "tiny"))[2]
	if fresh == tmpl {
		t.Fatalf("the template %s was not replaced", tmpl)
	}
	var pr api.CachePruneResult
	if err := json.Unmarshal([]byte(v.must("image", "cache", "prune", "--json")), &pr); err != nil {
		t.Fatal(err)
	}
	if len(pr.Templates) != 1 || pr.Templates[0] != tmpl {
		t.Fatalf("image cache prune removed templates %v, want [%s]", pr.Templates, tmpl)
	}
	if r := v.banger("vm", "show", tmpl); r.code == 0 {
		t.Fatalf("the stale template %s is still there", tmpl)
	}
	if r := v.banger("vm", "show", fresh); r.code != 0 {
		t.Fatalf("prune removed the current template %s: %s", fresh, r.stderr)
	}
	v.must("vm", "delete", "after")
}

// TestWarmStartPerVMSettings ([P10]): what a template cannot carry is right
// in a warm VM: --nat (an uplink in the test's namespaces answers a warm NAT
// guest, not a warm guest without NAT) and the /root work disk (its size,
// which is part of the shape, and banger's key in it).
func TestWarmStartPerVMSettings(t *testing.T) {
	v := warmEnv(t)
	addr := startUplink(t, v, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "uplink-ok") }))
	v.must("image", "warm", "tiny")
	v.must("image", "warm", "tiny", "--disk-size", "256M")
	v.must("vm", "create", "--name", "nat1", "--nat")
	v.must("vm", "create", "--name", "nonat")
	v.must("vm", "create", "--name", "big", "--disk-size", "256M")
	for _, n := range []string{"nat1", "nonat", "big"} {
		if s := v.show(n); s.Runtime.Start != "warm" {
			t.Fatalf("%s started %s", n, s.Runtime.Start)
		}
	}
	// busybox nc (the tiny image's busybox wget crashes on a network error).
	get := `printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 ` + addr + ` 80`
	if got := v.must("vm", "exec", "nat1", "--", "sh", "-c", get); !strings.HasSuffix(got, "uplink-ok") {
		t.Fatalf("warm NAT guest got %q from the uplink", got)
	}
	if r := v.banger("vm", "exec", "nonat", "--", "sh", "-c", get); strings.Contains(r.stdout, "uplink-ok") {
		t.Fatalf("a warm guest without NAT reached the uplink: %q", r.stdout)
	}
	for n, want := range map[string]int{"nonat": 128, "big": 256} {
		out := strings.Fields(v.must("vm", "exec", n, "--", "sh", "-c", "df -m /root | awk 'NR==2 {print $2}'; test -s /root/.ssh/authorized_keys && echo key"))
		size, _ := strconv.Atoi(out[0])
		if len(out) != 2 || out[1] != "key" || size < want*85/100 || size > want {
			t.Errorf("%s: /root is %v MiB (want about %d) and %v", n, out, want, out)
		}
	}
	for _, n := range []string{"nat1", "nonat", "big"} {
		v.must("vm", "delete", n)
	}
}
