package config

// Fuzz targets for the config file and the sizes it (and --disk-size)
// spell. scripts/fuzz.sh lists them. Names carry an "fz" prefix so they
// cannot collide with the package's other test helpers.

import (
	"errors"
	"math/big"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// fzSizeValue is what a size string ParseSize accepted means, computed with
// big integers from the same spelling: the digits times the unit.
func fzSizeValue(s string) (*big.Int, bool) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	unit := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			unit = 1 << 10
		case 'M':
			unit = 1 << 20
		case 'G':
			unit = 1 << 30
		case 'T':
			unit = 1 << 40
		}
		if unit != 1 {
			t = t[:n-1]
		}
	}
	v, ok := new(big.Int).SetString(t, 10)
	if !ok {
		return nil, false
	}
	return v.Mul(v, big.NewInt(unit)), true
}

// FuzzParseSize: ParseSize never panics; a size it accepts is positive and
// is exactly the digits times the unit it spells (no int64 wrap-around: a
// size too large to count in bytes is refused, not turned into another
// number), and FormatSize can print it.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1G", "512M", "1GiB", " 2g ", "64k", "1048576", "1B", "0", "-1G", "1.5G", "01G", "+5",
		"8388607T", "9223372036854775807", "9223372036854775808", "1KB", "1TiB", "G", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if n != 0 {
				t.Fatalf("ParseSize(%q) refused (%v) but returned %d", s, err, n)
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error is not one line: %q", err.Error())
			}
			return
		}
		if n <= 0 {
			t.Fatalf("ParseSize(%q) = %d, not a positive size", s, n)
		}
		want, ok := fzSizeValue(s)
		if !ok || !want.IsInt64() || want.Int64() != n {
			t.Fatalf("ParseSize(%q) = %d, but %q means %v bytes", s, n, s, want)
		}
		if FormatSize(n) == "" {
			t.Fatalf("FormatSize(%d) is empty", n)
		}
	})
}

// fzCheckConfig checks every rule docs/config.md gives for an accepted
// config, written out independently of validate.
func fzCheckConfig(t *testing.T, c Config) {
	t.Helper()
	fail := func(key string, v any) { t.Fatalf("accepted %s = %#v", key, v) }
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		fail("log_level", c.LogLevel)
	}
	if c.FirecrackerBin != "" && !filepath.IsAbs(c.FirecrackerBin) {
		fail("firecracker_bin", c.FirecrackerBin)
	}
	// A Linux interface name: at most 15 bytes, no '/', no space.
	if !strings.HasPrefix(c.BridgeName, "banger") || len(c.BridgeName) > 15 || strings.Trim(c.BridgeName, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		fail("bridge_name", c.BridgeName)
	}
	p, err := netip.ParsePrefix(c.CIDR)
	if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 29 || p.Masked() != p || c.Network() != p {
		fail("cidr", c.CIDR)
	}
	if d := c.DefaultImage; len(d) < 1 || len(d) > 63 || d[0] == '-' || d[len(d)-1] == '-' || strings.Trim(d, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		fail("default_image", d)
	}
	if c.DNSListen != "" {
		if ap, err := netip.ParseAddrPort(c.DNSListen); err != nil || ap.Port() == 0 {
			fail("dns_listen", c.DNSListen)
		}
	}
	for _, d := range c.GuestDNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() || a.IsLoopback() {
			fail("guest_dns", d)
		}
	}
	if k := c.SSHKeyPath; k != "" && !filepath.IsAbs(k) && !strings.HasPrefix(k, "~/") {
		fail("ssh_key_path", k)
	}
	// auto_park_after: off ("", "0", a zero duration) or a Go duration of
	// at least a second.
	if a := c.AutoParkAfter; a != "" && a != "0" {
		if d, err := time.ParseDuration(a); err != nil || (d != 0 && d < time.Second) {
			fail("auto_park_after", a)
		}
	}
	if c.VMDefaults.VCPU < 1 || c.VMDefaults.VCPU > 32 {
		fail("vm_defaults.vcpu", c.VMDefaults.VCPU)
	}
	if c.VMDefaults.MemoryMiB < 128 {
		fail("vm_defaults.memory_mib", c.VMDefaults.MemoryMiB)
	}
	if n, err := ParseSize(c.VMDefaults.DiskSize); err != nil || n <= 0 {
		fail("vm_defaults.disk_size", c.VMDefaults.DiskSize)
	}
	for key, u := range map[string]string{"catalog.image_url": c.Catalog.ImageURL, "catalog.kernel_url": c.Catalog.KernelURL} {
		if u == "" {
			continue
		}
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			fail(key, u)
		}
	}
	if k := c.Catalog.PublicKeyFile; k != "" && !filepath.IsAbs(k) {
		fail("catalog.public_key_file", k)
	}
}

// fzSameConfig compares two configs, an absent list and an empty one being
// the same.
func fzSameConfig(a, b Config) bool {
	if !slices.Equal(a.GuestDNS, b.GuestDNS) || !slices.Equal(a.Derive.AptSources, b.Derive.AptSources) {
		return false
	}
	a.GuestDNS, b.GuestDNS = nil, nil
	a.Derive.AptSources, b.Derive.AptSources = nil, nil
	return reflect.DeepEqual(a, b)
}

// FuzzLoad: Load never panics on any file. A refusal is one line naming the
// file, and an *Error's line is within the file. An accepted config obeys
// every documented rule (checked independently of validate), lists each key
// once with its source ("default", or the file and a line within it, for
// exactly the keys the file sets), and survives a round trip: written back
// as TOML and loaded again, it is the same config.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"",
		"log_level = \"debug\"\n\n[vm_defaults]\nvcpu = 2\n",
		"log_level = \"warn\"\nfirecracker_bin = \"/usr/local/bin/firecracker\"\nbridge_name = \"banger1\"\ncidr = \"10.20.0.0/16\"\n" +
			"default_image = \"alpine-3\"\nssh_key_path = \"~/.ssh/banger\"\ndns_listen = \"\"\nguest_dns = [\"1.1.1.1\", \"9.9.9.9\"]\nauto_park_after = \"15m\"\n\n" +
			"[vm_defaults]\nvcpu = 4\nmemory_mib = 2048\ndisk_size = \"20GiB\"\n\n[catalog]\nimage_url = \"https://catalog.example/images/index.json\"\n" +
			"kernel_url = \"http://catalog.example/kernels/index.json\"\npublic_key_file = \"/etc/banger/catalog.pub\"\n",
		"vm_defaults.vcpu = 3\nvm_defaults = { memory_mib = 256 }\n",
		"log_level = \"info\"\nbogus = 1\n",
		"[vm_defaults]\nvcpus = 1\n",
		"\nlog_level = \"loud\"\n",
		"[vm_defaults]\nvcpu = \"two\"\n",
		"cidr = \"172.30.0.1/24\"\n",
		"guest_dns = [\"127.0.0.1\"]\n",
		"[vm_defaults]\ndisk_size = \"16777217T\"\n",
		"log_level = 'debug'\r\n[catalog]\r\nimage_url = 'ftp://x'\r\n",
		"= 1\n[[vm_defaults]]\n",
		"auto_park_after = \"0\"\n",
		"auto_park_after = \"500ms\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		nlines := strings.Count(string(data), "\n") + 1
		l, err := Load(p)
		if err != nil {
			if l != nil {
				t.Fatal("refused but returned a config")
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\r") || !strings.HasPrefix(msg, "config "+p) {
				t.Fatalf("refusal is not one line naming the file: %q", msg)
			}
			var ce *Error
			if errors.As(err, &ce) && (ce.File != p || ce.Line < 0 || ce.Line > nlines) {
				t.Fatalf("refusal points at %s:%d of a %d-line file", ce.File, ce.Line, nlines)
			}
			return
		}
		fzCheckConfig(t, l.Config)
		if l.File != p {
			t.Fatalf("File = %q", l.File)
		}
		var raw map[string]any
		if err := toml.Unmarshal(data, &raw); err != nil {
			t.Fatalf("Load accepted what toml refuses: %v", err)
		}
		set := map[string]bool{}
		var walk func(prefix string, m map[string]any)
		walk = func(prefix string, m map[string]any) {
			for k, v := range m {
				if sub, ok := v.(map[string]any); ok {
					walk(prefix+k+".", sub)
				} else {
					set[prefix+k] = true
				}
			}
		}
		walk("", raw)
		seen := map[string]bool{}
		for _, e := range l.Entries {
			if seen[e.Key] {
				t.Fatalf("key %s listed twice", e.Key)
			}
			seen[e.Key] = true
			if !set[e.Key] {
				if e.Source != "default" && !strings.HasPrefix(e.Source, "host (") {
					t.Fatalf("%s is not in the file but its source is %q", e.Key, e.Source)
				}
				continue
			}
			line, ok := strings.CutPrefix(e.Source, p+":")
			n, cerr := strconv.Atoi(line)
			if !ok || cerr != nil || n < 0 || n > nlines {
				t.Fatalf("%s is set in the file but its source is %q", e.Key, e.Source)
			}
		}
		for k := range set {
			if seen[k] {
				continue
			}
			for _, e := range l.Entries {
				if strings.EqualFold(e.Key, k) {
					t.Fatalf("the file sets %q, which Load accepted as %s = %#v, yet reports that key's source as %q", k, e.Key, e.Value, e.Source)
				}
			}
			t.Fatalf("the file sets %q, which Load accepted, yet no entry lists it", k)
		}

		out, err := toml.Marshal(l.Config)
		if err != nil {
			t.Fatal(err)
		}
		p2 := filepath.Join(filepath.Dir(p), "again.toml")
		if err := os.WriteFile(p2, out, 0o600); err != nil {
			t.Fatal(err)
		}
		l2, err := Load(p2)
		if err != nil {
			t.Fatalf("the accepted config, written back, is refused: %v\n%s", err, out)
		}
		if !fzSameConfig(l.Config, l2.Config) {
			t.Fatalf("round trip changed the config:\n got %+v\nwant %+v\n%s", l2.Config, l.Config, out)
		}
	})
}
