//go:build smoke

package smoke

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Refused update variants: each is a release tree under
// releases/variants/<name>/ that differs from the good release in one way.
var variantNames = []string{
	"tampered-sums", "wrong-key", "malformed-signature", "missing-signature-url",
	"unknown-schema", "oversize-manifest",
	"unsigned-manifest", "tampered-manifest", "expired-manifest", "replayed-manifest",
	"tarball-extra-entry", "tarball-missing-entry", "tarball-traversal", "tarball-symlink",
}

func makeVariants(key string) error {
	goodDir := filepath.Join(art.releases, goodVersion)
	var m map[string]any
	b, err := os.ReadFile(filepath.Join(art.releases, "manifest.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	tarName := "banger-" + goodVersion + "-linux-amd64.tar.gz"
	goodTar, _ := os.ReadFile(filepath.Join(goodDir, tarName))
	goodSums, _ := os.ReadFile(filepath.Join(goodDir, "SHA256SUMS"))
	goodSig, _ := os.ReadFile(filepath.Join(goodDir, "SHA256SUMS.sig"))
	otherKey := filepath.Join(art.root, "other.pem")
	if out, err := exec.Command("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", otherKey).CombinedOutput(); err != nil {
		return fmt.Errorf("openssl: %v %s", err, out)
	}
	for _, name := range variantNames {
		dir := filepath.Join(art.releases, "variants", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		tarball, sums, sig := goodTar, goodSums, goodSig
		base := "http://127.0.0.1:8080/variants/" + name + "/"
		rel := map[string]any{"version": goodVersion, "tarball_url": base + tarName, "sha256sums_url": base + "SHA256SUMS", "signature_url": base + "SHA256SUMS.sig"}
		// Signed like the real manifest and dated the same, so the update
		// state the variants leave behind never refuses the real one.
		man := map[string]any{"schema_version": 1, "issued": m["issued"], "expires": m["expires"], "latest_stable": goodVersion, "releases": []any{rel}}
		resign := func(k string) {
			sum := sha256.Sum256(tarball)
			sums = []byte(hex.EncodeToString(sum[:]) + "  " + tarName + "\n")
			sig = sign(k, sums)
		}
		switch name {
		case "tampered-sums":
			sums = bytes.Clone(goodSums)
			if sums[0] == '0' {
				sums[0] = '1'
			} else {
				sums[0] = '0'
			}
		case "wrong-key":
			sig = sign(otherKey, goodSums)
		case "malformed-signature":
			sig = []byte("this is not a signature!!")
		case "missing-signature-url":
			rel["signature_url"] = ""
		case "unknown-schema":
			man["schema_version"] = 2
		case "expired-manifest":
			man["issued"] = time.Now().UTC().Add(-31 * 24 * time.Hour).Format(time.RFC3339)
			man["expires"] = time.Now().UTC().Add(-24 * time.Hour).Format(time.RFC3339)
		case "replayed-manifest": // signed, valid, but issued before the one already accepted
			issued, _ := time.Parse(time.RFC3339, m["issued"].(string))
			man["issued"] = issued.Add(-time.Hour).Format(time.RFC3339)
		case "tarball-extra-entry", "tarball-missing-entry", "tarball-traversal", "tarball-symlink":
			tarball, err = mutateTar(goodTar, name)
			if err != nil {
				return err
			}
			resign(key)
		}
		mb, _ := json.MarshalIndent(man, "", "  ")
		if name == "oversize-manifest" {
			mb = append(mb, bytes.Repeat([]byte(" "), 2<<20)...)
		}
		files := map[string][]byte{"manifest.json": mb, "manifest.json.sig": sign(key, mb), tarName: tarball, "SHA256SUMS": sums, "SHA256SUMS.sig": sig}
		switch name {
		case "unsigned-manifest":
			delete(files, "manifest.json.sig")
		case "tampered-manifest":
			files["manifest.json"] = bytes.Replace(mb, []byte(goodVersion), []byte(goodVersion+"x"), 1)
		}
		for f, data := range files {
			if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

func sign(key string, data []byte) []byte {
	cmd := exec.Command("openssl", "dgst", "-sha256", "-sign", key)
	cmd.Stdin = bytes.NewReader(data)
	der, err := cmd.Output()
	if err != nil {
		panic(err)
	}
	return []byte(base64.StdEncoding.EncodeToString(der))
}

func mutateTar(good []byte, how string) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(good))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		data, _ := io.ReadAll(tr)
		if how == "tarball-missing-entry" && hdr.Name == "banger-vmm" {
			continue
		}
		if how == "tarball-traversal" && hdr.Name == "bangerd" {
			hdr.Name = "../bangerd"
		}
		if how == "tarball-symlink" && hdr.Name == "banger-vmm" {
			hdr = &tar.Header{Name: "banger-vmm", Typeflag: tar.TypeSymlink, Linkname: "/bin/sh", Mode: 0o777}
			data = nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		tw.Write(data)
	}
	if how == "tarball-extra-entry" {
		tw.WriteHeader(&tar.Header{Name: "extra", Mode: 0o755, Size: 3, Typeflag: tar.TypeReg})
		tw.Write([]byte("hi\n"))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes(), nil
}

func scUpdateRefusals(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	before := h.snapshot()
	want := map[string]string{
		"tampered-sums":         "signature",
		"wrong-key":             "signature",
		"malformed-signature":   "signature",
		"missing-signature-url": "signature",
		"unknown-schema":        "schema",
		"oversize-manifest":     "",
		"unsigned-manifest":     "signature",
		"tampered-manifest":     "signature",
		"expired-manifest":      "expired",
		"replayed-manifest":     "older",
		"tarball-extra-entry":   "extra",
		"tarball-missing-entry": "banger-vmm",
		"tarball-traversal":     "",
		"tarball-symlink":       "",
	}
	for _, name := range variantNames {
		r := h.banger("update", "--to", goodVersion, "--manifest-url", "http://127.0.0.1:8080/variants/"+name+"/manifest.json", "--pubkey-file", "/mnt/smoke/release.pub")
		if r.code == 0 {
			t.Errorf("%s: update accepted", name)
			continue
		}
		if !strings.Contains(strings.ToLower(r.err), want[name]) {
			t.Errorf("%s: error %q does not mention %q", name, r.err, want[name])
		}
		t.Logf("%s refused: %s", name, strings.TrimSpace(r.err))
		h.assertUnchanged(before)
	}
	// Without root, and to an unknown version, are refused the same way.
	r := h.banger(h.updateArgs("--to", "v9.9.9")...)
	if r.code == 0 {
		t.Error("--to v9.9.9 accepted")
	}
	h.assertUnchanged(before)
	if left := h.sh("ls -A /var/cache/banger/updates 2>/dev/null || true"); strings.TrimSpace(left) != "" {
		t.Errorf("staging left behind: %s", left)
	}
}
