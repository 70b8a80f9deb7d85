//go:build linux

package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// answerV writes one ok response line at protocol version v.
func answerV(w io.Writer, req Request, v int, result string) {
	fmt.Fprintf(w, `{"v":%d,"id":%q,"ok":true,"result":%s}`+"\n", v, req.ID, result)
}

func testHostKey(t *testing.T) string {
	t.Helper()
	k, _, _ := ed25519.GenerateKey(rand.Reader)
	pub, err := ssh.NewPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
}

func jsonString(s string) string { b, _ := json.Marshal(s); return string(b) }

// TestIdentityClient: Identity sends the args at protocol 3 and returns the
// host keys without their comments.
func TestIdentityClient(t *testing.T) {
	k1, k2 := testHostKey(t), testHostKey(t)
	var got Request
	path := hostileGuestAgent(t, func(req Request, w io.Writer) {
		got = req
		answerV(w, req, 3, `{"clock_step_nanos":42,"host_keys":[`+jsonString(k1+" root@child")+`,`+jsonString(k2)+`],"later":{"x":1}}`)
	})
	c, ctx := dialHostile(t, path, 10*time.Second)
	a := validIdentityArgs()
	r, err := c.Identity(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClockStepNanos != 42 || !slices.Equal(r.HostKeys, []string{k1, k2}) {
		t.Errorf("result %+v", r)
	}
	var sent IdentityArgs
	if got.V != 3 || got.Op != OpIdentity || json.Unmarshal(got.Args, &sent) != nil || !slices.Equal(sent.Entropy, a.Entropy) || sent.MachineID != a.MachineID || sent.Hostname != a.Hostname || sent.MAC != a.MAC || sent.Address != a.Address || sent.Gateway != a.Gateway || sent.TimeUnixNano != a.TimeUnixNano {
		t.Errorf("request %+v (args %s)", got, got.Args)
	}
}

// TestIdentityOldAgent: an agent of protocol 1 or 2 refuses version 3; the
// host says its agent is too old for identity and what updates it. Refresh
// is still asked at version 2, which a protocol-2 agent answers.
func TestIdentityOldAgent(t *testing.T) {
	for _, old := range []int{1, 2} {
		var refreshV int
		path := hostileGuestAgent(t, func(req Request, w io.Writer) {
			if req.V < minProtocol || req.V > old {
				fmt.Fprintf(w, `{"v":%d,"id":%q,"ok":false,"error":"unsupported protocol version %d (this agent speaks 1 to %d)"}`+"\n", old, req.ID, req.V, old)
				return
			}
			refreshV = req.V
			answerV(w, req, req.V, `{"clock_step_nanos":1,"entropy_bytes":64}`)
		})
		c, ctx := dialHostile(t, path, 10*time.Second)
		_, err := c.Identity(ctx, validIdentityArgs())
		want := fmt.Sprintf("agent at %s: identity: the guest's banger-agent is too old for identity (it speaks protocol %d, identity needs 3); restarting the VM ('banger vm restart') or rebuilding its image updates it", path, old)
		if err == nil || err.Error() != want {
			t.Errorf("protocol %d agent: err = %v\nwant %s", old, err, want)
		}
		if old == 2 {
			if _, err := c.Refresh(ctx, RefreshArgs{TimeUnixNano: time.Now().UnixNano(), Entropy: make([]byte, 64)}); err != nil || refreshV != 2 {
				t.Errorf("refresh against a protocol 2 agent: %v (asked at %d)", err, refreshV)
			}
		}
	}
}

// TestHostileIdentityReplies: the host keys of an identity answer come from
// an untrusted guest: too many, too long, unparsable, with options, a
// certificate, duplicates, none at all, or not a list fail the call, with
// a one-line printable error.
func TestHostileIdentityReplies(t *testing.T) {
	k := testHostKey(t)
	nine := make([]string, 9)
	for i := range nine {
		nine[i] = jsonString(testHostKey(t))
	}
	signer, _ := ssh.NewSignerFromKey(func() ed25519.PrivateKey { _, p, _ := ed25519.GenerateKey(rand.Reader); return p }())
	hostPub, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(k))
	cert := &ssh.Certificate{Key: hostPub, CertType: ssh.HostCert, ValidPrincipals: []string{"child"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	certLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert)))
	long := "ssh-ed25519 " + strings.Repeat("A", maxHostKeyLine)

	for _, tc := range []struct{ result, want string }{
		{`{"host_keys":[` + strings.Join(nine, ",") + `]}`, "reply lists more than 8 host keys, the most banger takes"},
		{`{"host_keys":[` + jsonString(long) + `]}`, fmt.Sprintf("host key 1: %d bytes, more than 16384", len(long))},
		{`{"host_keys":[` + jsonString(k) + `,"ssh-ed25519 not-base64!"]}`, `host key 2: not an authorized_keys line ("ssh-ed25519 not-base64!"): ssh: no key found`},
		{`{"host_keys":["\u001b]0;pwned\u0007"]}`, `host key 1: not an authorized_keys line ("?]0;pwned?"): ssh: no key found`},
		{`{"host_keys":[` + jsonString(`command="/bin/sh" `+k) + `]}`, "host key 1: not a plain key line"},
		{`{"host_keys":[` + jsonString(k+"\n"+k) + `]}`, "host key 1: not a single line"},
		{`{"host_keys":[` + jsonString(certLine) + `]}`, "host key 1: a certificate, not a host key"},
		{`{"host_keys":[` + jsonString(k) + `,` + jsonString(k+" other comment") + `]}`, "host key 2: listed twice"},
		{`{"host_keys":[]}`, "the reply lists no host keys"},
		{`{"clock_step_nanos":5}`, "the reply lists no host keys"},
		{`{"host_keys":null}`, `"host_keys" is not a list`},
		{`{"host_keys":"` + k + `"}`, `"host_keys" is not a list`},
		{`{"host_keys":[7]}`, "host key 1: json: cannot unmarshal number"},
		{`{"host_keys":[` + jsonString(k) + `],"host_keys":[` + jsonString(k) + `]}`, `"host_keys" appears twice`},
		{`["ssh-ed25519"]`, "result is not a JSON object"},
	} {
		path := hostileGuestAgent(t, func(req Request, w io.Writer) { answerV(w, req, 3, tc.result) })
		c, ctx := dialHostile(t, path, 10*time.Second)
		r, err := c.Identity(ctx, validIdentityArgs())
		if err == nil || !strings.Contains(err.Error(), "identity: bad result: "+tc.want) {
			t.Errorf("%.80s: err = %.300v\nwant it to hold %q", tc.result, err, tc.want)
			continue
		}
		if len(r.HostKeys) != 0 || !fzPrintable(err.Error()) || len(err.Error()) > 1024 {
			t.Errorf("%.80s: result %+v, err %q", tc.result, r, err)
		}
	}
}

// TestIdentityThroughServe: the whole path, host client to agent, on a
// fake Debian guest.
func TestIdentityThroughServe(t *testing.T) {
	g := newFakeGuest(t)
	g.openSSH()
	a, b := net.Pipe()
	serve(t, b)
	c := NewConn(a)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Identity(ctx, validIdentityArgs())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.HostKeys, g.pubs) || r.ClockStepNanos != 1234 {
		t.Errorf("result %+v, want keys %q", r, g.pubs)
	}
	bad := validIdentityArgs()
	bad.MAC = "01:00:5e:00:00:01"
	_, err = c.Identity(ctx, bad)
	if want := "agent at pipe: identity: agent error: identity: mac: 01:00:5e:00:00:01 is a multicast address"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

// TestIdentityClientHostKeys: with host keys, Identity asks at protocol 4
// and sends them; an agent of protocol 3 refuses that version and is asked
// again at 3 without them (it makes its own keys).
func TestIdentityClientHostKeys(t *testing.T) {
	hk, err := NewHostKeys()
	if err != nil {
		t.Fatal(err)
	}
	for _, speaks := range []int{4, 3} {
		var got []Request
		guestKey := testHostKey(t)
		path := hostileGuestAgent(t, func(req Request, w io.Writer) {
			got = append(got, req)
			if req.V > speaks {
				fmt.Fprintf(w, `{"v":%d,"id":%q,"ok":false,"error":"unsupported protocol version %d (this agent speaks 1 to %d)"}`+"\n", speaks, req.ID, req.V, speaks)
				return
			}
			answerV(w, req, req.V, `{"clock_step_nanos":1,"host_keys":[`+jsonString(guestKey)+`]}`)
		})
		c, ctx := dialHostile(t, path, 10*time.Second)
		a := validIdentityArgs()
		a.HostKeys = hk
		r, err := c.Identity(ctx, a)
		if err != nil || !slices.Equal(r.HostKeys, []string{guestKey}) {
			t.Fatalf("protocol %d agent: %+v %v", speaks, r, err)
		}
		wantV := []int{4}
		if speaks == 3 {
			wantV = []int{4, 3}
		}
		if len(got) != len(wantV) {
			t.Fatalf("protocol %d agent: %d requests, want %d", speaks, len(got), len(wantV))
		}
		for i, req := range got {
			var sent IdentityArgs
			if err := json.Unmarshal(req.Args, &sent); err != nil || req.V != wantV[i] {
				t.Errorf("request %d: v%d %v", i, req.V, err)
			}
			if withKeys := wantV[i] == 4; withKeys != (len(sent.HostKeys) == 2 && sent.HostKeys[0] == hk[0]) {
				t.Errorf("request %d at v%d: host keys %+v", i, req.V, sent.HostKeys)
			}
		}
	}
}
