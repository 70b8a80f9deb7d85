// Package config loads banger's TOML configuration: defaults, then the
// mode's config file. Unknown keys and bad values are refused with the file,
// line and key named. Every key is documented in docs/config.md.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// Config is the effective configuration.
type Config struct {
	// LogLevel is debug, info, warn or error. BANGER_LOG_LEVEL overrides it.
	LogLevel string `toml:"log_level" json:"log_level"`
	// FirecrackerBin chooses the VMM binary; empty means auto-detect.
	FirecrackerBin string `toml:"firecracker_bin" json:"firecracker_bin"`
	// BridgeName is the host bridge the VMs' taps join.
	BridgeName string `toml:"bridge_name" json:"bridge_name"`
	// CIDR is the guest network; the first address is the bridge's.
	CIDR string `toml:"cidr" json:"cidr"`
	// DefaultImage is used when --image is not given.
	DefaultImage string `toml:"default_image" json:"default_image"`
	// SSHKeyPath is banger's SSH private key; empty means <state>/ssh/id_ed25519.
	SSHKeyPath string `toml:"ssh_key_path" json:"ssh_key_path"`
	// DNSListen is where the daemon answers <name>.vm (UDP and TCP); empty
	// turns the .vm DNS server off.
	DNSListen string `toml:"dns_listen" json:"dns_listen"`
	// GuestDNS are the nameservers guests use; empty means the host's
	// non-loopback resolvers (never 127.0.0.53, which guests cannot reach).
	GuestDNS []string `toml:"guest_dns" json:"guest_dns"`
	// AutoParkAfter parks a running VM after this long with no SSH
	// session open in it (docs/snapshots.md): a duration like "15m";
	// "" or "0" (the default) turns it off.
	AutoParkAfter string `toml:"auto_park_after" json:"auto_park_after"`
	// Start is how vm run and vm create start a VM: "warm" (the default:
	// from a warm-start template of its shape when there is one, else a
	// boot, after which the template is made) or "cold" (always a boot).
	Start string `toml:"start" json:"start"`
	// VMDefaults are the resources of a VM created without flags.
	VMDefaults VMDefaults `toml:"vm_defaults" json:"vm_defaults"`
	// Catalog is where images and kernels are pulled from by name.
	Catalog Catalog `toml:"catalog" json:"catalog"`
	// OCI caps what an image pulled from an OCI registry unpacks to.
	OCI OCI `toml:"oci" json:"oci"`
	// Derive configures builds of derived images (.banger/image.toml).
	Derive Derive `toml:"derive" json:"derive"`
	// Contexts are Kubernetes clusters of banger hosts (banger-vk nodes)
	// that 'banger --context NAME vm run' runs VMs on (docs/scale-out.md).
	// Without --context the CLI uses the local daemon.
	Contexts map[string]Context `toml:"contexts" json:"contexts"`
}

// Context is a [contexts.NAME] table: how to reach a cluster of banger
// hosts.
type Context struct {
	// Kubeconfig is the kubeconfig file (absolute or ~/); empty means
	// $KUBECONFIG, else ~/.kube/config.
	Kubeconfig string `toml:"kubeconfig" json:"kubeconfig"`
	// KubeContext picks a context of the kubeconfig (default: its current).
	KubeContext string `toml:"kube_context" json:"kube_context"`
	// Namespace is where the VM Pods go (default: the kubeconfig's, else
	// "default").
	Namespace string `toml:"namespace" json:"namespace"`
}

// contextKeys are the keys of a [contexts.NAME] table.
var contextKeys = map[string]bool{"kubeconfig": true, "kube_context": true, "namespace": true}

// Derive is the [derive] table: how a repository's derived image is built
// (in a throwaway VM of its base image, with NAT; docs/devbox.md).
type Derive struct {
	// AptSources replace the base image's apt sources during the build
	// ("deb URL SUITE COMPONENT..." lines: a local or company mirror);
	// empty keeps the image's own.
	AptSources []string `toml:"apt_sources" json:"apt_sources"`
}

// Catalog is the [catalog] table: signed image and kernel indexes
// (docs/catalog.md). Empty URLs mean no catalog: images are built locally.
type Catalog struct {
	// ImageURL is the image catalog's index.json (signed: index.json.sig beside it).
	ImageURL string `toml:"image_url" json:"image_url"`
	// KernelURL is the kernel catalog's index.json.
	KernelURL string `toml:"kernel_url" json:"kernel_url"`
	// PublicKeyFile verifies the indexes instead of the release key built into banger.
	PublicKeyFile string `toml:"public_key_file" json:"public_key_file"`
	// MaxUnpackedSize caps what one bundle unpacks to: a bundle whose
	// index entry signs a larger unpacked_size is refused, and one whose
	// entry gives none is stopped past this while it streams.
	MaxUnpackedSize string `toml:"max_unpacked_size" json:"max_unpacked_size"`
}

// MaxUnpackedBytes is MaxUnpackedSize in bytes (validated by Load).
func (c Catalog) MaxUnpackedBytes() int64 { n, _ := ParseSize(c.MaxUnpackedSize); return n }

// OCI is the [oci] table: caps on what an image pulled from a registry
// unpacks to, counted while its layers stream (docs/oci-import.md).
type OCI struct {
	// MaxLayerSize caps one layer (its decompressed tar, and its files).
	MaxLayerSize string `toml:"max_layer_size" json:"max_layer_size"`
	// MaxImageSize caps all of an image's layers together.
	MaxImageSize string `toml:"max_image_size" json:"max_image_size"`
}

// MaxLayerBytes is MaxLayerSize in bytes (validated by Load).
func (o OCI) MaxLayerBytes() int64 { n, _ := ParseSize(o.MaxLayerSize); return n }

// MaxImageBytes is MaxImageSize in bytes (validated by Load).
func (o OCI) MaxImageBytes() int64 { n, _ := ParseSize(o.MaxImageSize); return n }

// VMDefaults is the [vm_defaults] table.
type VMDefaults struct {
	VCPU      int    `toml:"vcpu" json:"vcpu"`
	MemoryMiB int    `toml:"memory_mib" json:"memory_mib"`
	DiskSize  string `toml:"disk_size" json:"disk_size"`
}

// Start values.
const (
	StartWarm = "warm"
	StartCold = "cold"
)

// Warm reports whether VMs start from warm-start templates.
func (c Config) Warm() bool { return c.Start != StartCold }

// AutoPark is AutoParkAfter as a duration; 0 is off (validated by Load).
func (c Config) AutoPark() time.Duration { d, _ := ParseAutoPark(c.AutoParkAfter); return d }

// MinAutoPark is the shortest auto_park_after other than off.
const MinAutoPark = time.Second

// ParseAutoPark parses an auto_park_after value: "" or "0" (or "0s") is
// off (0), anything else a Go duration ("15m", "1h30m", "30s") of at least
// MinAutoPark.
func ParseAutoPark(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err == nil && d == 0 {
		return 0, nil // "0s", "0m": off too
	}
	if err != nil || d < MinAutoPark {
		return 0, fmt.Errorf("%q is not a duration like \"15m\" or \"30s\" (at least %v); \"\" or \"0\" turns auto-park off", s, MinAutoPark)
	}
	return d, nil
}

// Default returns the built-in defaults.
func Default() Config {
	return Config{
		LogLevel:     "info",
		BridgeName:   "banger0",
		CIDR:         "172.30.0.0/24",
		DefaultImage: "debian-bookworm",
		DNSListen:    "127.0.0.1:42069",
		// A dev box: `go build`, `npm install` or a small `docker build`
		// fit (docs/devbox.md). Memory is taken by the guest only as it is
		// touched; the work disk is sparse.
		VMDefaults: VMDefaults{VCPU: 2, MemoryMiB: 2048, DiskSize: "8G"},
		Catalog:    Catalog{MaxUnpackedSize: "32G"},
		OCI:        OCI{MaxLayerSize: "16G", MaxImageSize: "32G"},
	}
}

// Entry is one effective key, with where its value came from.
type Entry struct {
	Key    string `json:"key"`
	Value  any    `json:"value"`
	Source string `json:"source"`
}

// Loaded is a config plus the provenance of every key.
type Loaded struct {
	Config
	File    string  `json:"file"`
	Entries []Entry `json:"entries"`
}

// Error is a config problem pinned to file, line and key.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("config %s:%d: key %q: %s", e.File, e.Line, e.Key, e.Msg)
	}
	return fmt.Sprintf("config %s: key %q: %s", e.File, e.Key, e.Msg)
}

// Load reads path over the defaults. A missing file is not an error.
// vm_defaults.vcpu and memory_mib the file does not set come from the host's
// size (their source says so).
func Load(path string) (*Loaded, error) {
	cfg := Default()
	present := map[string]bool{}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		data = nil
	case err != nil:
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if data != nil {
		dec := toml.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return nil, decodeError(path, data, err)
		}
		var raw map[string]any
		if err := toml.Unmarshal(data, &raw); err != nil {
			return nil, decodeError(path, data, err)
		}
		flatten("", raw, present)
		// The decoder matches keys ignoring case; banger's keys are spelt
		// one way only (so provenance and errors can name the line).
		known := map[string]bool{}
		for _, kv := range fields(reflect.ValueOf(cfg), "") {
			known[kv.Key] = true
		}
		keys := make([]string, 0, len(present))
		for k := range present {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if parts := strings.SplitN(k, ".", 3); len(parts) == 3 && parts[0] == "contexts" && contextKeys[parts[2]] {
				continue
			}
			if !known[k] {
				return nil, &Error{File: path, Line: lineOfFold(data, k), Key: k, Msg: fmt.Sprintf("unknown key; keys are lower case (%q)", strings.ToLower(k))}
			}
		}
	}
	hostSrc := sizeVMDefaults(&cfg, present)
	if err := cfg.validate(); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.File = path
			if present[ce.Key] {
				ce.Line = lineOf(data, ce.Key)
			}
		}
		return nil, err
	}
	l := &Loaded{Config: cfg, File: path}
	for _, kv := range fields(reflect.ValueOf(cfg), "") {
		src := "default"
		if h, ok := hostSrc[kv.Key]; ok {
			src = h
		}
		if present[kv.Key] {
			src = fmt.Sprintf("%s:%d", path, lineOf(data, kv.Key))
		}
		l.Entries = append(l.Entries, Entry{Key: kv.Key, Value: kv.Value, Source: src})
	}
	return l, nil
}

func decodeError(path string, data []byte, err error) error {
	var sm *toml.StrictMissingError
	if errors.As(err, &sm) && len(sm.Errors) > 0 {
		d := sm.Errors[0]
		row, _ := d.Position()
		key := strings.Join(d.Key(), ".")
		return &Error{File: path, Line: row, Key: key, Msg: "unknown key (see docs/config.md for the valid keys)"}
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		msg := de.Error()
		if key == "" {
			key = keyAtLine(data, row)
		}
		return &Error{File: path, Line: row, Key: key, Msg: msg}
	}
	return fmt.Errorf("config %s: %v", path, err)
}

var logLevels = map[string]bool{"debug": true, "info": true, "warn": true, "error": true}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (c *Config) validate() error {
	bad := func(key, format string, a ...any) error {
		return &Error{Key: key, Msg: fmt.Sprintf(format, a...)}
	}
	if !logLevels[c.LogLevel] {
		return bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.FirecrackerBin != "" && !filepath.IsAbs(c.FirecrackerBin) {
		return bad("firecracker_bin", "%q must be an absolute path", c.FirecrackerBin)
	}
	if !strings.HasPrefix(c.BridgeName, "banger") || len(c.BridgeName) > 15 || !regexp.MustCompile(`^[a-z0-9-]+$`).MatchString(c.BridgeName) {
		return bad("bridge_name", "%q must start with \"banger\", use [a-z0-9-] and be at most 15 characters", c.BridgeName)
	}
	p, err := netip.ParsePrefix(c.CIDR)
	if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 29 || p.Masked() != p {
		return bad("cidr", "%q must be an IPv4 network like 172.30.0.0/24 (prefix 8-29)", c.CIDR)
	}
	if !nameRE.MatchString(c.DefaultImage) {
		return bad("default_image", "%q is not a valid image name", c.DefaultImage)
	}
	if c.DNSListen != "" {
		if ap, err := netip.ParseAddrPort(c.DNSListen); err != nil || ap.Port() == 0 {
			return bad("dns_listen", "%q must be IP:PORT, like 127.0.0.1:42069 (or \"\" to turn the .vm DNS off)", c.DNSListen)
		}
	}
	for _, d := range c.GuestDNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() || a.IsLoopback() {
			return bad("guest_dns", "%q must be a non-loopback IPv4 address a guest can reach", d)
		}
	}
	if c.SSHKeyPath != "" && !filepath.IsAbs(c.SSHKeyPath) && !strings.HasPrefix(c.SSHKeyPath, "~/") {
		return bad("ssh_key_path", "%q must be absolute or start with ~/", c.SSHKeyPath)
	}
	if _, err := ParseAutoPark(c.AutoParkAfter); err != nil {
		return bad("auto_park_after", "%v", err)
	}
	if c.Start != "" && c.Start != StartWarm && c.Start != StartCold {
		return bad("start", "%q is not \"warm\" or \"cold\"", c.Start)
	}
	for i, l := range c.Derive.AptSources {
		if f := strings.Fields(l); len(f) < 3 || (f[0] != "deb" && f[0] != "deb-src") || strings.ContainsAny(l, "\n\r\x00'") {
			return bad("derive.apt_sources", "entry %d (%q) is not a sources.list line like \"deb http://mirror/debian bookworm main\"", i+1, l)
		}
	}
	for name, cx := range c.Contexts {
		if !nameRE.MatchString(name) {
			return bad("contexts", "context name %q must be a DNS label (a-z, 0-9, '-')", name)
		}
		if cx.Kubeconfig != "" && !filepath.IsAbs(cx.Kubeconfig) && !strings.HasPrefix(cx.Kubeconfig, "~/") {
			return bad("contexts."+name+".kubeconfig", "%q must be absolute or start with ~/", cx.Kubeconfig)
		}
		if cx.Namespace != "" && !nameRE.MatchString(cx.Namespace) {
			return bad("contexts."+name+".namespace", "%q is not a namespace name", cx.Namespace)
		}
	}
	if c.VMDefaults.VCPU < 1 || c.VMDefaults.VCPU > 32 {
		return bad("vm_defaults.vcpu", "%d is out of range (1-32)", c.VMDefaults.VCPU)
	}
	if c.VMDefaults.MemoryMiB < 128 {
		return bad("vm_defaults.memory_mib", "%d is too little memory (at least 128)", c.VMDefaults.MemoryMiB)
	}
	if _, err := ParseSize(c.VMDefaults.DiskSize); err != nil {
		return bad("vm_defaults.disk_size", "%v", err)
	}
	for _, ku := range [][2]string{{"catalog.image_url", c.Catalog.ImageURL}, {"catalog.kernel_url", c.Catalog.KernelURL}} {
		key, u := ku[0], ku[1]
		if u == "" {
			continue
		}
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return bad(key, "%q must be an http(s) URL of an index.json", u)
		}
	}
	if c.Catalog.PublicKeyFile != "" && !filepath.IsAbs(c.Catalog.PublicKeyFile) {
		return bad("catalog.public_key_file", "%q must be an absolute path", c.Catalog.PublicKeyFile)
	}
	for _, ks := range [][2]string{{"catalog.max_unpacked_size", c.Catalog.MaxUnpackedSize},
		{"oci.max_layer_size", c.OCI.MaxLayerSize}, {"oci.max_image_size", c.OCI.MaxImageSize}} {
		if _, err := ParseSize(ks[1]); err != nil {
			return bad(ks[0], "%v", err)
		}
	}
	return nil
}

// Network returns the parsed guest network.
func (c *Config) Network() netip.Prefix { return netip.MustParsePrefix(c.CIDR) }

// FormatSize writes a byte count for people: "512 B", "3.5 MiB", "1.2 GiB".
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// ParseSize parses "512M", "2G", "1GiB" or a byte count.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	var v int64
	if _, err := fmt.Sscanf(t, "%d", &v); err != nil || fmt.Sprint(v) != t || v <= 0 {
		return 0, fmt.Errorf("%q is not a size like 512M or 2G", s)
	}
	if v > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return v * mult, nil
}

type kv struct {
	Key   string
	Value any
}

func fields(v reflect.Value, prefix string) []kv {
	var out []kv
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag := strings.Split(t.Field(i).Tag.Get("toml"), ",")[0]
		if tag == "" {
			continue
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct {
			out = append(out, fields(fv, prefix+tag+".")...)
			continue
		}
		out = append(out, kv{Key: prefix + tag, Value: fv.Interface()})
	}
	return out
}

func flatten(prefix string, m map[string]any, out map[string]bool) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if sub, ok := m[k].(map[string]any); ok {
			flatten(prefix+k+".", sub, out)
			continue
		}
		out[prefix+k] = true
	}
}

var (
	tableRE = regexp.MustCompile(`^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]`)
	keyRE   = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=`)
)

// lineOfFold is lineOf for a key whose spelling may differ in case.
func lineOfFold(data []byte, key string) int {
	lower := bytes.ToLower(data)
	return lineOf(lower, strings.ToLower(key))
}

// lineOf finds the 1-based line that sets a dotted key ("vm_defaults.vcpu").
func lineOf(data []byte, dotted string) int {
	table, key := "", dotted
	if i := strings.LastIndex(dotted, "."); i >= 0 {
		table, key = dotted[:i], dotted[i+1:]
	}
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := tableRE.FindStringSubmatch(line); m != nil {
			cur = m[1]
			continue
		}
		if m := keyRE.FindStringSubmatch(line); m != nil && m[1] == key && cur == table {
			return n
		}
	}
	return 0
}

func keyAtLine(data []byte, row int) string {
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := tableRE.FindStringSubmatch(line); m != nil {
			cur = m[1]
		}
		if n == row {
			if m := keyRE.FindStringSubmatch(line); m != nil {
				if cur != "" {
					return cur + "." + m[1]
				}
				return m[1]
			}
			return ""
		}
	}
	return ""
}
