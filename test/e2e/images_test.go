package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/testutil"
)

// listenInNS opens a loopback listener inside network namespace ns, so a
// server run by the test answers the daemon there (and nothing else).
func listenInNS(t *testing.T, ns string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	inNS(t, ns, func() { ln, err = net.Listen("tcp", "127.0.0.1:0") })
	if err != nil {
		t.Fatalf("listen in netns %s: %v", ns, err)
	}
	return ln
}

// inNS runs fn on a thread inside network namespace ns (sockets it opens
// live there); the thread is discarded afterwards.
func inNS(t *testing.T, ns string, fn func()) {
	t.Helper()
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, herr := netns.GetFromName(ns)
		if herr != nil {
			err = herr
			return
		}
		defer h.Close()
		if err = netns.Set(h); err != nil {
			return
		}
		fn()
	}()
	<-done
	if err != nil {
		t.Fatalf("enter netns %s: %v", ns, err)
	}
}

func serve(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// guestArtifacts builds (or reuses) the built-in guest outside any netns.
func guestArtifacts(t *testing.T) guestbuild.Artifacts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	art, err := guestbuild.Ensure(ctx, guestOpts())
	if err != nil {
		t.Fatalf("guest artifacts: %v", err)
	}
	return art
}

// variantRootfs copies the tiny rootfs with 8 random bytes in its last
// (unused) block, so each variant is a distinct bundle.
func variantRootfs(t *testing.T, src, dir string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	dst := filepath.Join(dir, "rootfs.ext4")
	runTool(t, "cp", "--sparse=always", src, dst)
	os.Chmod(dst, 0o644)
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	b := make([]byte, 8)
	rand.Read(b)
	if _, err := f.WriteAt(b, fi.Size()-8); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

type catalogIndex struct {
	Entries []struct {
		Name, Bundle, SHA256 string
	} `json:"entries"`
}

func readIndex(t *testing.T, path string) catalogIndex {
	t.Helper()
	var ix catalogIndex
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ix); err != nil {
		t.Fatal(err)
	}
	return ix
}

func (ix catalogIndex) bundle(t *testing.T, name string) string {
	for _, e := range ix.Entries {
		if e.Name == name {
			return filepath.Base(e.Bundle)
		}
	}
	t.Fatalf("no %s in the index", name)
	return ""
}

// leftovers lists what is under the state dir's images/ (or kernels/) for
// name, and anything in their staging dirs.
func (v *vmEnv) leftovers(name string) []string {
	var out []string
	for _, sub := range []string{"images", "kernels"} {
		root := filepath.Join(v.home, ".local", "state", "banger", sub)
		m, _ := filepath.Glob(filepath.Join(root, name+"*"))
		out = append(out, m...)
		s, _ := filepath.Glob(filepath.Join(root, ".staging", "*"))
		out = append(out, s...)
	}
	return out
}

// TestImageCatalog publishes a kernel and images with banger-release, serves
// the catalog over HTTP inside the test's netns, and checks: a good bundle
// pulls (with its kernel) and boots; a tampered bundle, a tampered index and
// a bad index signature are refused with nothing left behind; two
// concurrent pulls download once; delete is refused while a VM uses the
// image.
func TestImageCatalog(t *testing.T) {
	testutil.RequiresGuest(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	art := guestArtifacts(t)
	v := newVMEnv(t)
	work := t.TempDir()
	rel := filepath.Join(v.bin, "banger-release")
	key, otherKey := filepath.Join(work, "key.pem"), filepath.Join(work, "other.pem")
	runTool(t, rel, "--keygen", key)
	runTool(t, rel, "--keygen", otherKey)

	// The kernel: vmlinux + initrd from the built-in guest.
	kdir := filepath.Join(work, "kernel")
	os.MkdirAll(kdir, 0o755)
	runTool(t, "cp", art.Vmlinux, filepath.Join(kdir, "vmlinux"))
	runTool(t, "cp", art.Initrd, filepath.Join(kdir, "initrd.img"))
	cat := filepath.Join(work, "catalog")
	runTool(t, rel, "catalog", "--kind", "kernel", "--name", "cat-kernel", "--version", art.KernelVersion,
		"--from", kdir, "--out", filepath.Join(cat, "kernels"), "--key", key)
	for _, n := range []string{"cat-tiny", "cat-bad", "cat-two"} {
		d := filepath.Join(work, n)
		variantRootfs(t, art.Rootfs, d)
		runTool(t, rel, "catalog", "--kind", "image", "--name", n, "--kernel", "cat-kernel", "--description", "e2e "+n,
			"--from", d, "--out", filepath.Join(cat, "images"), "--key", key)
	}
	ix := readIndex(t, filepath.Join(cat, "images", "index.json"))
	// Tamper with cat-bad's bundle after signing: one byte in the middle.
	badBundle := filepath.Join(cat, "images", ix.bundle(t, "cat-bad"))
	b, _ := os.ReadFile(badBundle)
	b[len(b)/2] ^= 0x55
	os.WriteFile(badBundle, b, 0o644)
	// A tampered index (same signature) and a signature by another key.
	good, _ := os.ReadFile(filepath.Join(cat, "images", "index.json"))
	tampered := bytes.Replace(good, []byte("e2e cat-two"), []byte("e2e cat-TWO"), 1)
	if bytes.Equal(tampered, good) {
		t.Fatal("could not tamper with the index")
	}
	otherSig := runTool(t, "sh", "-c", fmt.Sprintf("openssl dgst -sha256 -sign %s %s | base64 -w0", otherKey, filepath.Join(cat, "images", "index.json")))

	var mode atomic.Value
	mode.Store("good")
	var mu sync.Mutex
	hits := map[string]int{}
	files := http.FileServer(http.Dir(cat))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[filepath.Base(r.URL.Path)]++
		mu.Unlock()
		switch {
		case r.URL.Path == "/images/index.json" && mode.Load() == "tampered-index":
			w.Write(tampered)
			return
		case r.URL.Path == "/images/index.json.sig" && mode.Load() == "bad-signature":
			w.Write([]byte(otherSig))
			return
		}
		files.ServeHTTP(w, r)
	})
	ln := listenInNS(t, v.ns)
	serve(t, ln, h)
	base := "http://" + ln.Addr().String()
	pub := strings.TrimSuffix(key, ".pem") + ".pub"
	if _, err := os.Stat(pub); err != nil {
		pub = key + ".pub"
	}
	f, _ := os.OpenFile(v.configFile(), os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "\n[catalog]\nimage_url = %q\nkernel_url = %q\npublic_key_file = %q\n", base+"/images/index.json", base+"/kernels/index.json", pub)
	f.Close()
	hitsOf := func(name string) int {
		mu.Lock()
		defer mu.Unlock()
		return hits[name]
	}

	// The catalog, verified, with nothing pulled yet.
	var c api.Catalog
	if err := json.Unmarshal([]byte(v.must("image", "list", "--available", "--json")), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Entries) != 3 || c.Entries[0].State != "available" {
		t.Fatalf("image catalog: %+v", c)
	}

	// A good bundle: pulled with its kernel on demand by vm run, and boots.
	out := v.must("vm", "run", "--rm", "--image", "cat-tiny", "--", "cat", "/etc/hostname")
	if strings.TrimSpace(out) == "" {
		t.Fatalf("vm run printed nothing")
	}
	var ks []api.Kernel
	json.Unmarshal([]byte(v.must("kernel", "list", "--json")), &ks)
	found := false
	for _, k := range ks {
		if k.Name == "cat-kernel" && strings.HasPrefix(k.Source, "catalog ") {
			found = true
		}
	}
	if !found {
		t.Fatalf("cat-kernel was not pulled: %+v", ks)
	}
	var im api.Image
	json.Unmarshal([]byte(v.must("image", "show", "cat-tiny", "--json")), &im)
	if !strings.HasPrefix(im.Source, "catalog ") || im.Kernel != "cat-kernel" {
		t.Fatalf("cat-tiny: %+v", im)
	}

	// The catalogs now say what is pulled; --force pulls a kernel again.
	var kc, ic api.Catalog
	json.Unmarshal([]byte(v.must("kernel", "list", "--available", "--json")), &kc)
	json.Unmarshal([]byte(v.must("image", "list", "--available", "--json")), &ic)
	if len(kc.Entries) != 1 || kc.Entries[0].State != "pulled" {
		t.Fatalf("kernel catalog: %+v", kc)
	}
	for _, e := range ic.Entries {
		if want := map[bool]string{true: "pulled", false: "available"}[e.Name == "cat-tiny"]; e.State != want {
			t.Fatalf("image catalog entry %s is %s, want %s", e.Name, e.State, want)
		}
	}
	kix := readIndex(t, filepath.Join(cat, "kernels", "index.json"))
	before := hitsOf(kix.bundle(t, "cat-kernel"))
	v.must("kernel", "pull", "cat-kernel")
	if hitsOf(kix.bundle(t, "cat-kernel")) != before {
		t.Fatal("kernel pull of a pulled kernel downloaded it again")
	}
	v.must("kernel", "pull", "cat-kernel", "--force")
	if hitsOf(kix.bundle(t, "cat-kernel")) != before+1 {
		t.Fatal("kernel pull --force did not download")
	}
	if out := v.must("vm", "run", "--rm", "--image", "cat-tiny", "--", "echo", "again"); out != "again\n" {
		t.Fatalf("boot after a forced kernel pull: %q", out)
	}

	// Refusals: nothing is left in the store or the staging dirs.
	refused := func(what, name, wantErr string) {
		t.Helper()
		before := hitsOf(ix.bundle(t, name))
		r := v.banger("image", "pull", name)
		if r.code == 0 || !strings.Contains(r.stderr, wantErr) {
			t.Fatalf("%s: exit %d, stderr %q (want %q)", what, r.code, r.stderr, wantErr)
		}
		if what != "tampered bundle" && hitsOf(ix.bundle(t, name)) != before {
			t.Fatalf("%s: the bundle was requested", what)
		}
		if l := v.leftovers(name); len(l) != 0 {
			t.Fatalf("%s left %v", what, l)
		}
		if r := v.banger("image", "show", name); r.code == 0 {
			t.Fatalf("%s: image %s is registered", what, name)
		}
		t.Logf("%s refused: %s", what, strings.TrimSpace(r.stderr))
	}
	refused("tampered bundle", "cat-bad", "banger:")
	mode.Store("tampered-index")
	refused("tampered index", "cat-two", "signature")
	mode.Store("bad-signature")
	refused("bad index signature", "cat-two", "signature")
	mode.Store("good")

	// Two concurrent pulls of one name download it once.
	var wg sync.WaitGroup
	res := make([]result, 2)
	for i := range res {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res[i] = v.banger("image", "pull", "cat-two")
		}(i)
	}
	wg.Wait()
	for i, r := range res {
		if r.code != 0 {
			t.Fatalf("concurrent pull %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	if n := hitsOf(ix.bundle(t, "cat-two")); n != 1 {
		t.Fatalf("cat-two's bundle was downloaded %d times, want 1", n)
	}

	// Delete is refused while a VM uses the image; the kernel while an image boots it.
	v.must("vm", "create", "--name", "user", "--image", "cat-two", "--no-start")
	r := v.banger("image", "delete", "cat-two")
	if r.code == 0 || !strings.Contains(r.stderr, "used by VM(s) user") {
		t.Fatalf("image delete in use: exit %d: %s", r.code, r.stderr)
	}
	r = v.banger("kernel", "rm", "cat-kernel")
	if r.code == 0 || !strings.Contains(r.stderr, "used by image(s)") {
		t.Fatalf("kernel rm in use: exit %d: %s", r.code, r.stderr)
	}
	v.must("vm", "delete", "user")
	v.must("image", "delete", "cat-two")
	if l := v.leftovers("cat-two"); len(l) != 0 {
		t.Fatalf("image delete left %v", l)
	}
}
