package guestbuild

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/banger-dev/banger/internal/sysexec/sysexectest"
)

// fakeRunner makes guestbuild run its programs through f for one test.
func fakeRunner(t *testing.T, f *sysexectest.Fake) {
	t.Helper()
	old := runner
	runner = f
	t.Cleanup(func() { runner = old })
}

func stanza(name, version, extra string) string {
	return fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: amd64\nSHA256: %064x\n%sDescription: x\n multi-line\n\n",
		name, version, len(name), extra)
}

// TestResolvePackages answers apt-cache with a fake: the meta package's
// Depends names the kernel, the candidates are pinned with their checksums.
func TestResolvePackages(t *testing.T) {
	var first strings.Builder
	first.WriteString(stanza(kernelMetaPackage, "6.1.1", "Depends: linux-image-6.1.0-99-cloud-amd64 (= 6.1.1)\n"))
	for _, p := range userlandPackages {
		first.WriteString(stanza(p, "1.0-"+p, ""))
		first.WriteString(stanza(p, "0.9-older", "")) // not the first record: ignored
	}
	f := (&sysexectest.Fake{}).On("apt-cache",
		sysexectest.Reply{Stdout: first.String()},
		sysexectest.Reply{Stdout: stanza("linux-image-6.1.0-99-cloud-amd64", "6.1.1-1", "")})
	fakeRunner(t, f)

	kver, kernel, userland, err := resolvePackages(context.Background(), "/usr/bin/apt-cache")
	if err != nil {
		t.Fatal(err)
	}
	if kver != "6.1.0-99-cloud-amd64" || kernel.Name != "linux-image-6.1.0-99-cloud-amd64" || kernel.Version != "6.1.1-1" || len(kernel.SHA256) != 64 {
		t.Errorf("kernel %s %+v", kver, kernel)
	}
	if len(userland) != len(userlandPackages) || userland[0].Version != "1.0-"+userlandPackages[0] {
		t.Errorf("userland %+v", userland)
	}
	want := []string{
		"/usr/bin/apt-cache show --no-all-versions " + kernelMetaPackage + " " + strings.Join(userlandPackages, " "),
		"/usr/bin/apt-cache show --no-all-versions linux-image-6.1.0-99-cloud-amd64",
	}
	if got := f.Argvs(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("runs:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range f.Calls() {
		if strings.Join(c.ExtraEnv, " ") != "LC_ALL=C" {
			t.Errorf("%s runs with %v, want LC_ALL=C", c.Path, c.ExtraEnv)
		}
	}
}

func TestResolvePackagesFailures(t *testing.T) {
	ctx := context.Background()
	fakeRunner(t, (&sysexectest.Fake{}).On("apt-cache", sysexectest.Reply{Stderr: "W: cache is old\nE: No packages found\n", Code: 100}))
	_, _, _, err := resolvePackages(ctx, "apt-cache")
	if err == nil || !strings.HasSuffix(err.Error(), ": exit status 100: W: cache is old | E: No packages found") || !strings.HasPrefix(err.Error(), "apt-cache show --no-all-versions") {
		t.Errorf("apt-cache failing: %v", err)
	}
	var se *sysexec.Error
	if !errors.As(err, &se) || se.Code != 100 {
		t.Errorf("not a *sysexec.Error: %#v", err)
	}

	fakeRunner(t, (&sysexectest.Fake{}).On("apt-cache", sysexectest.Reply{Stdout: stanza(kernelMetaPackage, "1", "Depends: linux-image-6.1.0-99-cloud-amd64\n")}))
	if _, _, _, err := resolvePackages(ctx, "apt-cache"); err == nil || !strings.Contains(err.Error(), "apt-cache has no candidate for busybox-static (run apt-get update?)") {
		t.Errorf("missing candidate: %v", err)
	}
}
