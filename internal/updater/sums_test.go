package updater

import (
	"context"
	"errors"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/trust"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

const (
	hexA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	hexB = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

// sumsServer serves /SHA256SUMS and /SHA256SUMS.sig from the given bodies and
// counts requests.
func sumsServer(t *testing.T, sums, sig []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/SHA256SUMS":
			w.Write(sums)
		case "/SHA256SUMS.sig":
			w.Write(sig)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func relAt(srv *httptest.Server) Release {
	return Release{Version: "v1.2.3", TarballURL: srv.URL + "/t.tar.gz",
		SHA256SumsURL: srv.URL + "/SHA256SUMS", SignatureURL: srv.URL + "/SHA256SUMS.sig"}
}

func TestFetchAndVerifySignature(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sums := []byte(hexA + "  " + TarballName("v1.2.3") + "\n")
	srv, _ := sumsServer(t, sums, k.Sign(t, sums))
	rel := relAt(srv)
	got, err := FetchAndVerifySignatureWithKey(context.Background(), srv.Client(), rel, k.PubPEM)
	if err != nil {
		t.Fatal(err)
	}
	h, err := rel.TarballSHA256(got)
	if err != nil || h != hexA {
		t.Fatalf("TarballSHA256 = %q, %v", h, err)
	}
	// The same signed sums do not vouch for another version's tarball name.
	other := rel
	other.Version = "v9.0.0"
	if _, err := other.TarballSHA256(got); !errors.Is(err, ErrBadSums) {
		t.Fatalf("other version: err = %v", err)
	}
	// The embedded key is the placeholder in this tree: refused.
	if trust.IsPlaceholderKey(trust.ReleasePublicKey()) {
		if _, err := FetchAndVerifySignature(context.Background(), srv.Client(), rel); !errors.Is(err, trust.ErrKeyNotConfigured) {
			t.Fatalf("embedded placeholder: err = %v", err)
		}
	}
}

func TestTamperedSumsRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sums := []byte(hexA + "  " + TarballName("v1.2.3") + "\n")
	sig := k.Sign(t, sums)
	tampered := []byte(hexB + "  " + TarballName("v1.2.3") + "\n")
	srv, _ := sumsServer(t, tampered, sig)
	_, err := FetchAndVerifySignatureWithKey(context.Background(), srv.Client(), relAt(srv), k.PubPEM)
	if !errors.Is(err, trust.ErrBadSignature) || !strings.Contains(err.Error(), "signature over SHA256SUMS of v1.2.3 does not verify with the release key") {
		t.Fatalf("err = %v", err)
	}
	// Wrong key.
	srv2, _ := sumsServer(t, sums, sig)
	if _, err := FetchAndVerifySignatureWithKey(context.Background(), srv2.Client(), relAt(srv2), testutil.NewOpenSSLKey(t, "prime256v1").PubPEM); !errors.Is(err, trust.ErrBadSignature) {
		t.Fatalf("wrong key: err = %v", err)
	}
	// Malformed signature.
	srv3, _ := sumsServer(t, sums, []byte("bm90IGEgc2lnbmF0dXJl"))
	if _, err := FetchAndVerifySignatureWithKey(context.Background(), srv3.Client(), relAt(srv3), k.PubPEM); !errors.Is(err, trust.ErrMalformedSignature) {
		t.Fatalf("malformed: err = %v", err)
	}
}

// TestSignedButMalformedSumsRefused: a correctly signed file is still parsed
// strictly.
func TestSignedButMalformedSumsRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sums := []byte("this is signed but not a checksum file\n")
	srv, _ := sumsServer(t, sums, k.Sign(t, sums))
	if _, err := FetchAndVerifySignatureWithKey(context.Background(), srv.Client(), relAt(srv), k.PubPEM); !errors.Is(err, ErrBadSums) {
		t.Fatalf("err = %v", err)
	}
}

func TestMissingSignatureURLRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sums := []byte(hexA + "  x\n")
	srv, hits := sumsServer(t, sums, k.Sign(t, sums))
	rel := relAt(srv)
	rel.SignatureURL = ""
	_, err := FetchAndVerifySignatureWithKey(context.Background(), srv.Client(), rel, k.PubPEM)
	if !errors.Is(err, ErrSignatureRequired) || !strings.Contains(err.Error(), "no signature URL") {
		t.Fatalf("err = %v", err)
	}
	if hits.Load() != 0 {
		t.Fatalf("%d requests made for an unsigned release", hits.Load())
	}
	// And through a manifest that omits it.
	body := `{"schema_version":1,"latest_stable":"v1.2.3","releases":[{"version":"v1.2.3","tarball_url":"` + rel.TarballURL +
		`","sha256sums_url":"` + rel.SHA256SumsURL + `"}]}`
	m, err := ParseManifest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	r, err := m.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FetchAndVerifySignatureWithKey(context.Background(), srv.Client(), r, k.PubPEM); !errors.Is(err, ErrSignatureRequired) {
		t.Fatalf("manifest without signature_url: err = %v", err)
	}
}

func TestOversizeSumsAndSignatureRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	big := []byte(strings.Repeat(hexA+"  x\n", int(MaxSumsBytes)/67+1))
	srv, _ := sumsServer(t, big, k.Sign(t, big))
	if _, err := FetchAndVerifySignatureWithKey(context.Background(), srv.Client(), relAt(srv), k.PubPEM); !errors.Is(err, trust.ErrTooLarge) {
		t.Fatalf("oversize sums: err = %v", err)
	}
	sums := []byte(hexA + "  x\n")
	srv2, _ := sumsServer(t, sums, []byte(strings.Repeat("A", int(MaxSignatureBytes)+4)))
	if _, err := FetchAndVerifySignatureWithKey(context.Background(), srv2.Client(), relAt(srv2), k.PubPEM); !errors.Is(err, trust.ErrTooLarge) {
		t.Fatalf("oversize signature: err = %v", err)
	}
}

func TestParseSHA256Sums(t *testing.T) {
	in := "# comment\n\n" +
		hexA + "  banger-v1-linux-amd64.tar.gz\n" +
		strings.ToUpper(hexB) + " *binary-mode.bin\r\n" +
		"SHA256 (bsd style.txt) = " + hexA + "\n"
	got, err := ParseSHA256Sums([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"banger-v1-linux-amd64.tar.gz": hexA, "binary-mode.bin": hexB, "bsd style.txt": hexA}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	bad := map[string]string{
		"empty":       "",
		"only notes":  "# nothing\n",
		"short hex":   hexA[:63] + "  f\n",
		"non-hex":     "z" + hexA[1:] + "  f\n",
		"one space":   hexA + " f\n",
		"no name":     hexA + "  \n",
		"duplicate":   hexA + "  f\n" + hexB + "  f\n",
		"bsd broken":  "SHA256 (f) " + hexA + "\n",
		"md5 length":  "d41d8cd98f00b204e9800998ecf8427e  f\n",
		"garbage row": hexA + "  f\nhello\n",
	}
	for name, s := range bad {
		if _, err := ParseSHA256Sums([]byte(s)); !errors.Is(err, ErrBadSums) {
			t.Errorf("%s: err = %v, want ErrBadSums", name, err)
		}
	}
}
