package guestssh

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// keyComment is the comment on banger's public key, so the line is
// recognisable in a guest's authorized_keys.
const keyComment = "banger"

// EnsureKey returns banger's SSH client key at path, creating it if missing:
// a fresh ed25519 key written as an OpenSSH private key (mode 0600) with the
// public half in path+".pub"; a missing parent directory is created 0700. An
// existing key is reused; its mode is tightened to 0600 if looser (ssh refuses
// group- or world-readable keys) and a missing or stale .pub is rewritten.
// authorizedKey is the authorized_keys line for the key, without a newline.
//
// Concurrent callers, in one process or several, end up with the same key: the
// new key is linked into place only if path does not exist yet.
func EnsureKey(path string) (signer ssh.Signer, authorizedKey string, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, "", fmt.Errorf("guestssh: key directory: %w", err)
	}
	signer, err = loadKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err = createKey(path); err == nil {
			signer, err = loadKey(path)
		}
	}
	if err != nil {
		return nil, "", err
	}
	authorizedKey = strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(signer.PublicKey())), "\n") + " " + keyComment
	if err := ensurePub(path+".pub", signer.PublicKey(), authorizedKey); err != nil {
		return nil, "", err
	}
	return signer, authorizedKey, nil
}

func loadKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("guestssh: read key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("guestssh: parse key %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("guestssh: stat key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("guestssh: tighten key mode: %w", err)
		}
	}
	return signer, nil
}

// createKey writes a new key to a temporary file and hard-links it to path,
// which fails harmlessly if another creator got there first.
func createKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("guestssh: generate key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, keyComment)
	if err != nil {
		return fmt.Errorf("guestssh: encode key: %w", err)
	}
	tmp, err := writeTemp(filepath.Dir(path), ".key-*", pem.EncodeToMemory(block), 0o600)
	if err != nil {
		return fmt.Errorf("guestssh: write key: %w", err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("guestssh: install key: %w", err)
	}
	return nil
}

// ensurePub rewrites the .pub file unless it already holds pub.
func ensurePub(path string, pub ssh.PublicKey, line string) error {
	if data, err := os.ReadFile(path); err == nil {
		if have, _, _, _, err := ssh.ParseAuthorizedKey(data); err == nil && keysEqual(have, pub) {
			return nil
		}
	}
	tmp, err := writeTemp(filepath.Dir(path), ".pub-*", []byte(line+"\n"), 0o644)
	if err != nil {
		return fmt.Errorf("guestssh: write public key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("guestssh: install public key: %w", err)
	}
	return nil
}

// writeTemp writes data to a new synced file in dir and returns its name.
func writeTemp(dir, pattern string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	name := f.Name()
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}
