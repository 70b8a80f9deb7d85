package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// NewHostKeys makes a fork's SSH host keys on the host (an ed25519 and a
// P-256 ECDSA key, what banger's images serve) for [IdentityArgs.HostKeys]:
// microseconds here against about 0.4 s of ssh-keygen in an emulated guest.
// The host keeps no copy: the keys are the guest's.
func NewHostKeys() ([]HostKeyPair, error) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	var out []HostKeyPair
	for _, k := range []struct {
		typ string
		key crypto.Signer
	}{{"ed25519", edKey}, {"ecdsa", ecKey}} {
		blk, err := ssh.MarshalPrivateKey(k.key, "")
		if err != nil {
			return nil, fmt.Errorf("%s host key: %w", k.typ, err)
		}
		pub, err := ssh.NewPublicKey(k.key.Public())
		if err != nil {
			return nil, fmt.Errorf("%s host key: %w", k.typ, err)
		}
		out = append(out, HostKeyPair{
			Type:    k.typ,
			Private: string(pem.EncodeToMemory(blk)),
			Public:  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))),
		})
	}
	return out, nil
}
