package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ulikunitz/xz"
	"golang.org/x/sync/errgroup"

	"github.com/banger-dev/banger/internal/testutil"
)

// The offline Debian mirror: only bookworm main for amd64, never the
// security or updates suites.
const (
	mirrorUpstream = "http://deb.debian.org/debian"
	mirrorSuite    = "bookworm"
	mirrorPackages = "main/binary-amd64/Packages.xz" // relative to dists/<suite>/
	// Translation-en is served too: apt with its default Acquire::Languages
	// (a fresh guest's) asks for it and fails the update on a 404.
	mirrorTranslations = "main/i18n/Translation-en.xz"
	mirrorMaxAge       = 24 * time.Hour // cached InRelease older than this is refreshed
	mirrorLink         = "bgmirror0"    // the veth end in v.ns
)

// startDebianMirror serves a read-only Debian bookworm "main" mirror for
// amd64 inside a new network namespace linked to v.ns by a veth pair, and
// makes that the default route of v.ns (so a --nat guest's traffic is
// masqueraded to it). It holds bookworm's InRelease, main/binary-amd64
// Packages.xz and main/i18n/Translation-en.xz (each also under its
// by-hash/SHA256 name, since Debian's Release says Acquire-By-Hash: yes;
// apt with default settings fails the update without Translation-en) and
// the .debs of pkgs plus their
// Depends/Pre-Depends closure (first alternative of each OR group; :any
// suffixes stripped; virtual packages resolved through Provides when no real
// package has the name), fetched once into testutil.CacheDir()/debian-mirror/
// and verified against the SHA256 in Packages. It returns the mirror's
// sources line, e.g. "deb http://10.231.0.2/debian bookworm main".
// Everything is torn down by t.Cleanup.
//
// Only the test process (in the root namespace) talks to deb.debian.org,
// before the mirror starts; the server never fetches on demand and answers
// 404 for anything not prefetched. Call it at most once per v.
func startDebianMirror(t *testing.T, v *vmEnv, pkgs ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	files, st, err := prefetchDebian(ctx, t, filepath.Join(testutil.CacheDir(), "debian-mirror"), pkgs)
	if err != nil {
		t.Fatalf("debian mirror: %v", err)
	}
	t.Logf("debian mirror: %d debs for %v ready in %s (%d files, %d bytes fetched from %s): %s",
		st.debs, pkgs, time.Since(start).Round(time.Millisecond), st.fetched, st.bytes, mirrorUpstream, strings.Join(st.names, " "))

	m := &mirrorHandler{files: files}
	t.Cleanup(func() {
		if miss := m.missed(); t.Failed() && len(miss) > 0 {
			t.Logf("debian mirror: not prefetched, answered 404: %s", strings.Join(miss, " "))
		}
	})
	far := startUplink(t, v, m)
	return fmt.Sprintf("deb http://%s/debian %s main", far, mirrorSuite)
}

// mirrorFile is one served file: a file under the cache dir, or (for
// InRelease, which a concurrent refresh may replace) a snapshot in memory.
type mirrorFile struct {
	path string
	data []byte
	mod  time.Time
}

// mirrorHandler serves exactly the prefetched files, by URL path: no
// directory listings, no path walking, 404 for anything else.
type mirrorHandler struct {
	files map[string]mirrorFile
	mu    sync.Mutex
	miss  []string
}

func (m *mirrorHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "read-only mirror", http.StatusMethodNotAllowed)
		return
	}
	f, ok := m.files[r.URL.Path]
	if !ok {
		m.mu.Lock()
		m.miss = append(m.miss, r.URL.Path)
		m.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	if f.data != nil {
		http.ServeContent(w, r, path.Base(r.URL.Path), f.mod, bytes.NewReader(f.data))
		return
	}
	fh, err := os.Open(f.path)
	if err != nil {
		http.Error(w, "cache file gone", http.StatusInternalServerError)
		return
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.Error(w, "bad cache file", http.StatusInternalServerError)
		return
	}
	http.ServeContent(w, r, path.Base(r.URL.Path), fi.ModTime(), fh)
}

func (m *mirrorHandler) missed() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.miss...)
}

type mirrorStats struct {
	debs, fetched int
	names         []string
	bytes         int64
}

// prefetchDebian makes sure root (testutil.CacheDir()/debian-mirror) holds a
// fresh InRelease, the Packages.xz it names and the .debs of pkgs' closure,
// all verified, and returns what to serve under /debian/. Files are written
// to a temporary name and renamed, so concurrent test processes share the
// cache safely; Packages.xz is kept under its by-hash name only, so a
// refresh never changes a file another process serves.
func prefetchDebian(ctx context.Context, t *testing.T, root string, pkgs []string) (map[string]mirrorFile, mirrorStats, error) {
	var st mirrorStats
	dists := filepath.Join(root, "debian", "dists", mirrorSuite)
	if err := os.MkdirAll(dists, 0o755); err != nil {
		return nil, st, err
	}
	inrelPath := filepath.Join(dists, "InRelease")
	inrel, err := os.ReadFile(inrelPath)
	fi, serr := os.Stat(inrelPath)
	if err != nil || serr != nil || time.Since(fi.ModTime()) > mirrorMaxAge || releaseSums(inrel)[mirrorPackages].sha == "" {
		fresh, ferr := httpGet(ctx, mirrorUpstream+"/dists/"+mirrorSuite+"/InRelease")
		switch {
		case ferr == nil && releaseSums(fresh)[mirrorPackages].sha != "":
			if err := writeAtomic(inrelPath, fresh); err != nil {
				return nil, st, err
			}
			inrel = fresh
			st.fetched++
			st.bytes += int64(len(fresh))
		case err == nil && releaseSums(inrel)[mirrorPackages].sha != "":
			// Keep going offline with the stale copy (and the files it names).
			t.Logf("debian mirror: refreshing InRelease failed (%v); using the cached one", ferr)
		case ferr == nil:
			return nil, st, fmt.Errorf("InRelease from %s names no SHA256 for %s", mirrorUpstream, mirrorPackages)
		default:
			return nil, st, fmt.Errorf("fetch InRelease: %w", ferr)
		}
		fi, _ = os.Stat(inrelPath)
	}
	mod := time.Now()
	if fi != nil {
		mod = fi.ModTime()
	}
	files := map[string]mirrorFile{
		"/debian/dists/" + mirrorSuite + "/InRelease": {data: inrel, mod: mod},
	}

	// Index files live on disk under their by-hash name only (immutable),
	// and are served under both names.
	sums := releaseSums(inrel)
	var pkgFile string
	for _, name := range []string{mirrorPackages, mirrorTranslations} {
		sum, ok := sums[name]
		if !ok {
			return nil, st, fmt.Errorf("InRelease names no SHA256 for %s", name)
		}
		byHash := path.Join(path.Dir(name), "by-hash", "SHA256", sum.sha)
		file := filepath.Join(dists, filepath.FromSlash(byHash))
		n, err := ensureFile(ctx, file, mirrorUpstream+"/dists/"+mirrorSuite+"/"+byHash, sum.sha, sum.size)
		if err != nil {
			return nil, st, fmt.Errorf("%s: %w", name, err)
		}
		if n > 0 {
			st.fetched++
			st.bytes += n
		}
		files["/debian/dists/"+mirrorSuite+"/"+name] = mirrorFile{path: file}
		files["/debian/dists/"+mirrorSuite+"/"+byHash] = mirrorFile{path: file}
		if name == mirrorPackages {
			pkgFile = file
		}
	}

	index, err := parsePackages(pkgFile)
	if err != nil {
		return nil, st, fmt.Errorf("%s: %w", mirrorPackages, err)
	}
	closure, err := index.closure(pkgs)
	if err != nil {
		return nil, st, err
	}
	st.debs = len(closure)
	for _, p := range closure {
		st.names = append(st.names, p.name)
	}

	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, p := range closure {
		dst := filepath.Join(root, "debian", filepath.FromSlash(p.filename))
		files["/debian/"+p.filename] = mirrorFile{path: dst}
		g.Go(func() error {
			n, err := ensureFile(gctx, dst, mirrorUpstream+"/"+p.filename, p.sha256, p.size)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if n > 0 {
				mu.Lock()
				st.fetched++
				st.bytes += n
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, st, err
	}
	return files, st, nil
}

type releaseSum struct {
	sha  string
	size int64
}

// releaseSums reads the SHA256 section of a Release/InRelease file.
func releaseSums(release []byte) map[string]releaseSum {
	sums := map[string]releaseSum{}
	in := false
	for _, line := range strings.Split(string(release), "\n") {
		line = strings.TrimRight(line, "\r")
		if !strings.HasPrefix(line, " ") {
			in = line == "SHA256:"
			continue
		}
		if !in {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || len(f[0]) != 64 {
			continue
		}
		if _, err := hex.DecodeString(f[0]); err != nil {
			continue
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		sums[f[2]] = releaseSum{sha: strings.ToLower(f[0]), size: size}
	}
	return sums
}

// ensureFile makes dst hold the file with the given SHA256 and size,
// downloading url when dst is missing or wrong. It returns the number of
// bytes downloaded (0 when the cache was good).
func ensureFile(ctx context.Context, dst, url, sha string, size int64) (int64, error) {
	if ok, _ := fileHasSHA256(dst, sha, size); ok {
		return 0, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".fetch-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(resp.Body, size+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != sha {
		return 0, fmt.Errorf("GET %s: got %d bytes with SHA256 %s, want %d bytes with %s", url, n, got, size, sha)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return 0, err
	}
	return n, os.Rename(tmp.Name(), dst)
}

func fileHasSHA256(p, sha string, size int64) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() != size {
		return false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return hex.EncodeToString(h.Sum(nil)) == sha, nil
}

func httpGet(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// writeAtomic replaces p with data through a temporary file and a rename.
func writeAtomic(p string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".fetch-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// debPackage is what the mirror needs of one Packages stanza.
type debPackage struct {
	name, filename, sha256 string
	size                   int64
	deps                   []string // Pre-Depends then Depends: first alternatives, bare names
	provides               []string
}

type debIndex struct {
	pkgs      map[string]*debPackage
	providers map[string][]*debPackage // virtual name -> providers, in file order
}

// parsePackages reads an xz-compressed Packages file.
func parsePackages(p string) (*debIndex, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := xz.NewReader(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, err
	}
	ix := &debIndex{pkgs: map[string]*debPackage{}, providers: map[string][]*debPackage{}}
	var cur *debPackage
	flush := func() error {
		if cur == nil {
			return nil
		}
		p := cur
		cur = nil
		if p.name == "" {
			return nil
		}
		if _, dup := ix.pkgs[p.name]; dup {
			return nil // keep the first stanza of a name
		}
		if p.filename == "" || p.sha256 == "" || !strings.HasPrefix(p.filename, "pool/") || !filepath.IsLocal(p.filename) {
			return fmt.Errorf("package %s: bad Filename %q or SHA256", p.name, p.filename)
		}
		ix.pkgs[p.name] = p
		for _, v := range p.provides {
			ix.providers[v] = append(ix.providers[v], p)
		}
		return nil
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // continuation (Description and the like)
		}
		k, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if cur == nil {
			cur = &debPackage{}
		}
		val = strings.TrimSpace(val)
		switch k {
		case "Package":
			cur.name = val
		case "Filename":
			cur.filename = val
		case "SHA256":
			cur.sha256 = strings.ToLower(val)
		case "Size":
			cur.size, _ = strconv.ParseInt(val, 10, 64)
		case "Pre-Depends", "Depends":
			cur.deps = append(cur.deps, depNames(val, true)...)
		case "Provides":
			cur.provides = depNames(val, false)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(ix.pkgs) == 0 {
		return nil, errors.New("no packages")
	}
	return ix, nil
}

// depNames turns "a (>= 1) | b, c:any" into [a c] (first alternatives, or
// every alternative when first is false; versions and :arch dropped).
func depNames(field string, first bool) []string {
	var out []string
	for _, group := range strings.Split(field, ",") {
		for i, alt := range strings.Split(group, "|") {
			if first && i > 0 {
				break
			}
			name := strings.TrimSpace(alt)
			if j := strings.IndexAny(name, " (["); j >= 0 {
				name = name[:j]
			}
			name, _, _ = strings.Cut(name, ":")
			if name != "" {
				out = append(out, name)
			}
		}
	}
	return out
}

// resolve finds the package for a name: the real one, else the first
// provider of the virtual name.
func (ix *debIndex) resolve(name string) *debPackage {
	if p := ix.pkgs[name]; p != nil {
		return p
	}
	if ps := ix.providers[name]; len(ps) > 0 {
		return ps[0]
	}
	return nil
}

// closure is pkgs plus everything they Depend/Pre-Depend on, sorted by name.
func (ix *debIndex) closure(pkgs []string) ([]*debPackage, error) {
	seen := map[string]*debPackage{}
	queue := append([]string(nil), pkgs...)
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		p := ix.resolve(name)
		if p == nil {
			return nil, fmt.Errorf("package %q is not in %s main (amd64), nor provided by any package there", name, mirrorSuite)
		}
		if seen[p.name] != nil {
			continue
		}
		seen[p.name] = p
		queue = append(queue, p.deps...)
	}
	out := make([]*debPackage, 0, len(seen))
	for _, p := range seen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// TestDebianMirror checks startDebianMirror with the host's own apt as the
// client, run inside the test's namespace: update and download work, what
// was not prefetched is 404, and nothing beyond the mirror is reachable.
func TestDebianMirror(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, tool := range []string{"ip", "apt-get"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	b := make([]byte, 4)
	rand.Read(b)
	v := &vmEnv{ns: "bgt-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", v.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", v.ns).Run() })
	exec.Command("ip", "-n", v.ns, "link", "set", "lo", "up").Run()

	line := startDebianMirror(t, v, "sqlite3")
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "deb" || f[2] != mirrorSuite || f[3] != "main" || !strings.HasPrefix(f[1], "http://10.231.") {
		t.Fatalf("sources line %q", line)
	}
	host := strings.TrimSuffix(strings.TrimPrefix(f[1], "http://"), "/debian")

	tmp := t.TempDir()
	for _, d := range []string{"lists/partial", "cache/archives/partial", "dl"} {
		os.MkdirAll(filepath.Join(tmp, d), 0o755)
	}
	os.WriteFile(filepath.Join(tmp, "sources.list"), []byte(line+"\n"), 0o644)
	// The host's apt.conf(.d) is left out (it may add index targets such as
	// DEP-11, proxies or languages): apt runs with its built-in defaults,
	// as in a fresh guest. Its keyring is the host's (trusted.gpg.d).
	os.MkdirAll(filepath.Join(tmp, "apt.conf.d"), 0o755)
	os.WriteFile(filepath.Join(tmp, "apt.conf"), []byte(fmt.Sprintf("Dir::Etc::main \"/dev/null\";\nDir::Etc::parts %q;\n", filepath.Join(tmp, "apt.conf.d"))), 0o644)
	apt := func(dir string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		full := append([]string{"netns", "exec", v.ns, "apt-get", "-q",
			"-o", "Dir::Etc::sourcelist=" + filepath.Join(tmp, "sources.list"),
			"-o", "Dir::Etc::sourceparts=-",
			"-o", "Dir::State::Lists=" + filepath.Join(tmp, "lists"),
			"-o", "Dir::Cache=" + filepath.Join(tmp, "cache"),
			"-o", "Dir::State::status=/var/lib/dpkg/status",
			"-o", "Debug::NoLocking=1",
			"-o", "APT::Architectures=amd64",
			"-o", "APT::Sandbox::User=root",
		}, args...)
		cmd := exec.CommandContext(ctx, "ip", full...)
		cmd.Dir = dir
		// No proxy variables; no locale, so apt wants Translation-en only.
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "APT_CONFIG=" + filepath.Join(tmp, "apt.conf")}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("apt-get %s:\n%s", strings.Join(args, " "), tail(string(out), 1500))
	}
	apt(tmp, "update")
	apt(filepath.Join(tmp, "dl"), "download", "sqlite3")
	debs, _ := filepath.Glob(filepath.Join(tmp, "dl", "sqlite3_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("apt-get download sqlite3 left %v", debs)
	}

	// From inside v.ns: what was not prefetched is 404, InRelease is 200.
	get := func(p string) int {
		t.Helper()
		var c net.Conn
		var err error
		inNS(t, v.ns, func() { c, err = net.DialTimeout("tcp", host+":80", 5*time.Second) })
		if err != nil {
			t.Fatalf("dial mirror from %s: %v", v.ns, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		req, _ := http.NewRequest(http.MethodHead, "http://"+host+p, nil)
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for p, want := range map[string]int{
		"/debian/dists/bookworm/InRelease":                     200,
		"/debian/dists/bookworm/main/binary-amd64/Packages.gz": 404,
		"/debian/dists/bookworm/main/i18n/Translation-en.xz":   200,
		"/debian/dists/bookworm/main/i18n/Translation-en":      404,
		"/debian/dists/bookworm/main/Contents-amd64.gz":        404,
		"/debian/pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb":  404,
		"/debian/dists/bookworm-updates/InRelease":             404,
		"/debian/": 404,
		"/debian/dists/bookworm/../bookworm/InRelease":                        404,
		"/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/" + zeroHash: 404,
	} {
		if got := get(p); got != want {
			t.Errorf("HEAD %s: %d, want %d", p, got, want)
		}
	}

	// Nothing but the mirror is reachable from v.ns: the default route ends
	// in the mirror's namespace, which routes nowhere.
	var err error
	start := time.Now()
	inNS(t, v.ns, func() {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", "1.1.1.1:80", 2*time.Second); err == nil {
			c.Close()
		}
	})
	if err == nil {
		t.Fatal("1.1.1.1:80 reachable from the test namespace")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("connect to 1.1.1.1:80 took %s to fail", d)
	} else {
		t.Logf("1.1.1.1:80 from %s: %v (after %s)", v.ns, err, d.Round(time.Millisecond))
	}
	if out, _ := exec.Command("ip", "-n", v.ns, "route", "show", "default").CombinedOutput(); !strings.Contains(string(out), mirrorLink) {
		t.Fatalf("default route of %s: %s", v.ns, out)
	}
	if out, _ := exec.Command("ip", "netns", "exec", v.ns, "cat", "/proc/sys/net/ipv4/ip_forward").Output(); strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("ip_forward in %s: %q", v.ns, out)
	}
}

var zeroHash = strings.Repeat("0", 64)

// startUplink serves h over HTTP on port 80 of an address in a new network
// namespace linked to v.ns by a veth pair, made v.ns's default route (so a
// --nat guest's traffic is masqueraded to it; a guest without NAT cannot
// reach it). It returns the address. Everything is torn down by t.Cleanup.
// Call it at most once per v.
func startUplink(t *testing.T, v *vmEnv, h http.Handler) string {
	t.Helper()
	// 10.231.n.0/30, away from banger's guest network (172.30.0.0/24 by
	// default). Each pair lives only in v.ns and the mirror's namespace.
	hash := fnv.New32a()
	hash.Write([]byte(v.ns))
	n := hash.Sum32() % 256
	near, far := fmt.Sprintf("10.231.%d.1", n), fmt.Sprintf("10.231.%d.2", n)
	b := make([]byte, 4)
	rand.Read(b)
	mns := "bgm-" + hex.EncodeToString(b)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", mns)
	// Deleting the namespace takes the veth pair (and v.ns's default route)
	// with it; the server's socket is closed before (cleanups run LIFO).
	t.Cleanup(func() { exec.Command("ip", "netns", "del", mns).Run() })
	ip("-n", mns, "link", "set", "lo", "up")
	ip("-n", v.ns, "link", "add", mirrorLink, "type", "veth", "peer", "name", "eth0", "netns", mns)
	ip("-n", v.ns, "addr", "add", near+"/30", "dev", mirrorLink)
	ip("-n", v.ns, "link", "set", mirrorLink, "up")
	ip("-n", mns, "addr", "add", far+"/30", "dev", "eth0")
	ip("-n", mns, "link", "set", "eth0", "up")
	ip("-n", v.ns, "route", "replace", "default", "via", far)
	// banger's root helper enables forwarding when it sets up the bridge;
	// do it here too so the route works whatever runs first.
	var ferr error
	inNS(t, v.ns, func() {
		// /proc/sys/net resolves against the opening thread's namespace.
		f, err := os.OpenFile("/proc/sys/net/ipv4/ip_forward", os.O_WRONLY, 0)
		if err != nil {
			ferr = err
			return
		}
		_, ferr = f.Write([]byte("1\n"))
		if cerr := f.Close(); ferr == nil {
			ferr = cerr
		}
	})
	if ferr != nil {
		t.Fatalf("ip_forward in %s: %v", v.ns, ferr)
	}

	var ln net.Listener
	var err error
	inNS(t, mns, func() { ln, err = net.Listen("tcp", far+":80") })
	if err != nil {
		t.Fatalf("listen in netns %s: %v", mns, err)
	}
	serve(t, ln, h)
	return far
}
