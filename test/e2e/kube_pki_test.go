package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeCA is the one certificate authority of a test cluster: it signs the
// API server's serving cert, every client cert (admin, controllers, nodes,
// the API server's kubelet-client cert) and the kubelets' serving certs.
type kubeCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte // the CA certificate, PEM
}

// certSpec describes a certificate to issue: a client cert unless server.
type certSpec struct {
	cn     string
	orgs   []string
	server bool
	ips    []string
	dns    []string
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func ecKeyPEM(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func newSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newKubeCA(t testing.TB) *kubeCA {
	t.Helper()
	key := newECKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(t),
		Subject:               pkix.Name{CommonName: "banger-e2e-kubernetes-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &kubeCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a fresh P-256 key for s and returns the cert and key, PEM.
func (ca *kubeCA) issue(t testing.TB, s certSpec) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newECKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(t),
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(47 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     s.dns,
	}
	if s.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	for _, ip := range s.ips {
		parsed := net.ParseIP(ip)
		if parsed == nil {
			t.Fatalf("certificate for %s: bad IP %q", s.cn, ip)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ecKeyPEM(t, key)
}

// writePair issues s and writes it as dir/name.crt and dir/name.key.
func (ca *kubeCA) writePair(t testing.TB, dir, name string, s certSpec) (certFile, keyFile string) {
	t.Helper()
	c, k := ca.issue(t, s)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeSecret(t, certFile, c)
	writeSecret(t, keyFile, k)
	return certFile, keyFile
}

// writeClientKubeconfig issues a client cert for s and writes a kubeconfig
// at path that presents it to server, trusting ca (all data embedded, so
// the file can be copied elsewhere on its own).
func (ca *kubeCA) writeClientKubeconfig(t testing.TB, path, server string, s certSpec) {
	t.Helper()
	c, k := ca.issue(t, s)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["banger-e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca.pem}
	cfg.AuthInfos[s.cn] = &clientcmdapi.AuthInfo{ClientCertificateData: c, ClientKeyData: k}
	cfg.Contexts["banger-e2e"] = &clientcmdapi.Context{Cluster: "banger-e2e", AuthInfo: s.cn}
	cfg.CurrentContext = "banger-e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
}

// writeSAKeys writes the service-account signing key pair: sa.key
// (private, for the API server's signer and the controller-manager) and
// sa.pub (public, for the API server's token verification).
func writeSAKeys(t testing.TB, dir string) (priv, pub string) {
	t.Helper()
	key := newECKey(t)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	priv, pub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	writeSecret(t, priv, ecKeyPEM(t, key))
	writeSecret(t, pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	return priv, pub
}

func writeSecret(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
