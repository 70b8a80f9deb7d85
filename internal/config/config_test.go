package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMissingFileGivesDefaults(t *testing.T) {
	saved := hostSize
	t.Cleanup(func() { hostSize = saved })
	hostSize = func() (int, int) { return 0, 0 } // host unknown: the static defaults
	l, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(l.Config, Default()) {
		t.Fatalf("got %+v", l.Config)
	}
	for _, e := range l.Entries {
		if e.Source != "default" {
			t.Fatalf("%s from %s", e.Key, e.Source)
		}
	}
}

// TestVMDefaultsFromHostSize: vm_defaults.vcpu and memory_mib the file does
// not set come from the host's size, and config show says so; a value the
// file sets wins.
func TestVMDefaultsFromHostSize(t *testing.T) {
	saved := hostSize
	t.Cleanup(func() { hostSize = saved })
	for _, tc := range []struct {
		cpus, mem, wantCPU, wantMem int
	}{
		{1, 1024, 1, 512},       // a tiny host: never more than it has, half its memory
		{2, 24105, 2, 2816},     // this project's build machine
		{4, 8192, 2, 1024},      // a laptop VM
		{16, 65536, 8, 8192},    // a workstation
		{128, 1 << 20, 8, 8192}, // capped
	} {
		hostSize = func() (int, int) { return tc.cpus, tc.mem }
		l, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
		if err != nil {
			t.Fatal(err)
		}
		if l.VMDefaults.VCPU != tc.wantCPU || l.VMDefaults.MemoryMiB != tc.wantMem {
			t.Errorf("host %d CPUs %d MiB: vcpu %d memory %d, want %d and %d", tc.cpus, tc.mem, l.VMDefaults.VCPU, l.VMDefaults.MemoryMiB, tc.wantCPU, tc.wantMem)
		}
		src := map[string]string{}
		for _, e := range l.Entries {
			src[e.Key] = e.Source
		}
		if want := fmt.Sprintf("host (%d CPUs)", tc.cpus); src["vm_defaults.vcpu"] != want {
			t.Errorf("vcpu source %q, want %q", src["vm_defaults.vcpu"], want)
		}
		if want := fmt.Sprintf("host (%d MiB)", tc.mem); src["vm_defaults.memory_mib"] != want {
			t.Errorf("memory source %q, want %q", src["vm_defaults.memory_mib"], want)
		}
	}
	hostSize = func() (int, int) { return 16, 65536 }
	p := write(t, "[vm_defaults]\nmemory_mib = 1536\n")
	l, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if l.VMDefaults.MemoryMiB != 1536 || l.VMDefaults.VCPU != 8 {
		t.Errorf("file memory 1536 on a 16-CPU host: got vcpu %d memory %d", l.VMDefaults.VCPU, l.VMDefaults.MemoryMiB)
	}
	if mt := memTotalMiB("/proc/meminfo"); mt <= 0 {
		t.Errorf("MemTotal from /proc/meminfo: %d", mt)
	}
}

func TestFileOverridesWithSource(t *testing.T) {
	saved := hostSize
	t.Cleanup(func() { hostSize = saved })
	hostSize = func() (int, int) { return 0, 0 }
	p := write(t, "log_level = \"debug\"\n\n[vm_defaults]\nvcpu = 3\n")
	l, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if l.LogLevel != "debug" || l.VMDefaults.VCPU != 3 || l.VMDefaults.MemoryMiB != 2048 {
		t.Fatalf("got %+v", l.Config)
	}
	src := map[string]string{}
	for _, e := range l.Entries {
		src[e.Key] = e.Source
	}
	if src["log_level"] != p+":1" || src["vm_defaults.vcpu"] != p+":4" || src["cidr"] != "default" {
		t.Fatalf("sources %v", src)
	}
}

func TestContexts(t *testing.T) {
	p := write(t, "[contexts.ci]\nkubeconfig = \"~/.kube/ci\"\nnamespace = \"vms\"\n\n[contexts.lab]\nkube_context = \"lab-admin\"\n")
	l, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c := l.Contexts["ci"]; c.Kubeconfig != "~/.kube/ci" || c.Namespace != "vms" {
		t.Fatalf("ci: %+v", c)
	}
	if c := l.Contexts["lab"]; c.KubeContext != "lab-admin" || c.Kubeconfig != "" {
		t.Fatalf("lab: %+v", c)
	}
}

func TestRefusals(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"unknown key", "log_level = \"info\"\nbogus = 1\n", `:2: key "bogus": unknown key`},
		{"unknown nested key", "[vm_defaults]\nvcpus = 1\n", `:2: key "vm_defaults.vcpus": unknown key`},
		{"bad level", "\nlog_level = \"loud\"\n", `:2: key "log_level": "loud" is not one of`},
		{"wrong type", "[vm_defaults]\nvcpu = \"two\"\n", `:2: key "vm_defaults.vcpu"`},
		{"zero vcpu", "[vm_defaults]\nvcpu = 0\n", `:2: key "vm_defaults.vcpu": 0 is out of range`},
		{"bad cidr", "cidr = \"10.0.0.1/33\"\n", `:1: key "cidr"`},
		{"bad bridge", "bridge_name = \"eth0\"\n", `:1: key "bridge_name"`},
		{"bad size", "[vm_defaults]\n\ndisk_size = \"lots\"\n", `:3: key "vm_defaults.disk_size"`},
		{"syntax", "log_level = \n", `:1:`},
		{"bad dns listen", "dns_listen = \"localhost\"\n", `:1: key "dns_listen"`},
		{"loopback guest dns", "guest_dns = [\"127.0.0.53\"]\n", `:1: key "guest_dns": "127.0.0.53" must be a non-loopback`},
		{"catalog url not http", "[catalog]\nimage_url = \"ftp://x/index.json\"\n", `:2: key "catalog.image_url"`},
		{"relative catalog key", "[catalog]\npublic_key_file = \"key.pub\"\n", `:2: key "catalog.public_key_file"`},
		// Found by FuzzLoad: the decoder matched keys ignoring case, so a
		// mixed-case key was applied but reported as a default.
		{"mixed-case key", "[vm_defAults]\ndisk_size = \"2G\"\n", `:2: key "vm_defAults.disk_size": unknown key; keys are lower case`},
		{"size overflow", "[vm_defaults]\ndisk_size = \"16777217T\"\n", `:2: key "vm_defaults.disk_size"`},
		{"auto park not a duration", "log_level = \"info\"\nauto_park_after = \"15\"\n", `:2: key "auto_park_after": "15" is not a duration like "15m" or "30s" (at least 1s); "" or "0" turns auto-park off`},
		{"auto park negative", "auto_park_after = \"-5m\"\n", `:1: key "auto_park_after": "-5m" is not a duration`},
		{"auto park too short", "auto_park_after = \"500ms\"\n", `:1: key "auto_park_after": "500ms" is not a duration`},
		{"auto park a number", "auto_park_after = 900\n", `:1: key "auto_park_after"`},
		{"auto park in vm_defaults", "[vm_defaults]\nauto_park_after = \"15m\"\n", `:2: key "vm_defaults.auto_park_after": unknown key`},
		{"unknown context key", "[contexts.ci]\nkubeconfig = \"/k\"\nserver = \"x\"\n", `:3: key "contexts.ci.server": unknown key`},
		{"relative kubeconfig", "[contexts.ci]\nkubeconfig = \"k.yaml\"\n", `:2: key "contexts.ci.kubeconfig": "k.yaml" must be absolute or start with ~/`},
		{"bad context name", "[contexts.Big_One]\nnamespace = \"x\"\n", `key "contexts": context name "Big_One" must be a DNS label`},
		{"bad namespace", "[contexts.ci]\nnamespace = \"Not OK\"\n", `:2: key "contexts.ci.namespace"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := write(t, c.body)
			_, err := Load(p)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, p+c.want) && !strings.Contains(msg, c.want) {
				t.Fatalf("error %q does not contain %q", msg, c.want)
			}
			if !strings.HasPrefix(msg, "config "+p) {
				t.Fatalf("error %q does not name the file", msg)
			}
			if strings.Contains(msg, "\n") {
				t.Fatalf("error is not one line: %q", msg)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "2G": 2 << 30, "1GiB": 1 << 30, "4096": 4096, "8k": 8 << 10} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, in := range []string{"", "G", "-1G", "1.5G", "abc", "0"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 12 << 20: "12.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestAutoPark(t *testing.T) {
	if d := Default().AutoPark(); d != 0 {
		t.Fatalf("auto-park is on by default: %v", d)
	}
	for in, want := range map[string]time.Duration{"": 0, "0": 0, "0s": 0, "1s": time.Second, "30s": 30 * time.Second, "15m": 15 * time.Minute, "1h30m": 90 * time.Minute} {
		got, err := ParseAutoPark(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"15", "-1s", "999ms", "soon", "0x", " 15m", "1d"} {
		if _, err := ParseAutoPark(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	p := write(t, "auto_park_after = \"4s\"\n")
	l, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if l.AutoPark() != 4*time.Second {
		t.Fatalf("AutoPark() = %v", l.AutoPark())
	}
	for _, e := range l.Entries {
		if e.Key == "auto_park_after" && (e.Value != "4s" || e.Source != p+":1") {
			t.Fatalf("entry %+v", e)
		}
	}
}
