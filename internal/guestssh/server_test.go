package guestssh

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// testServer is a real SSH server on 127.0.0.1 that runs "exec" requests with
// /bin/sh -c and "shell" requests with /bin/sh reading the channel, and
// reports exit-status or exit-signal like sshd.
type testServer struct {
	t        *testing.T
	ln       net.Listener
	addr     string
	hostKeys []ssh.PublicKey
	accepted atomic.Int32

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

func newEd25519Signer(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newECDSASigner(t *testing.T) ssh.Signer {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// listenLocal listens on addr ("127.0.0.1:0" for any port).
func listenLocal(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// startServer serves SSH on ln, trusting clientKey, presenting hostKeys.
func startServer(t *testing.T, ln net.Listener, clientKey ssh.PublicKey, hostKeys ...ssh.Signer) *testServer {
	t.Helper()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if keysEqual(key, clientKey) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	for _, k := range hostKeys {
		cfg.AddHostKey(k)
	}
	s := &testServer{t: t, ln: ln, addr: ln.Addr().String(), conns: map[net.Conn]bool{}}
	for _, k := range hostKeys {
		s.hostKeys = append(s.hostKeys, k.PublicKey())
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = true
			s.wg.Add(1)
			s.mu.Unlock()
			go func() {
				defer s.wg.Done()
				s.serveConn(c, cfg)
			}()
		}
	}()
	t.Cleanup(s.Close)
	return s
}

// Close stops listening, drops every connection and waits for the handlers.
func (s *testServer) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *testServer) serveConn(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveSession(ch, creqs)
		}()
	}
}

func serveSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	var (
		cmd      *exec.Cmd
		procDone = make(chan struct{})
	)
	defer func() {
		// The client closed the channel: kill what is still running.
		if cmd == nil {
			ch.Close()
			return
		}
		select {
		case <-procDone:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-procDone
		}
	}()
	for req := range reqs {
		switch req.Type {
		case "exec", "shell":
			if cmd != nil {
				req.Reply(false, nil)
				continue
			}
			args := []string{}
			if req.Type == "exec" {
				var p struct{ Command string }
				if err := ssh.Unmarshal(req.Payload, &p); err != nil {
					req.Reply(false, nil)
					continue
				}
				args = []string{"-c", p.Command}
			}
			c := exec.Command("/bin/sh", args...)
			c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			c.Stdout = ch
			c.Stderr = ch.Stderr()
			c.WaitDelay = 5 * time.Second
			stdin, err := c.StdinPipe()
			if err != nil {
				req.Reply(false, nil)
				continue
			}
			if err := c.Start(); err != nil {
				req.Reply(false, nil)
				continue
			}
			cmd = c
			req.Reply(true, nil)
			go func() {
				io.Copy(stdin, ch)
				stdin.Close()
			}()
			go func() {
				defer close(procDone)
				c.Wait()
				ws := c.ProcessState.Sys().(syscall.WaitStatus)
				if ws.Signaled() {
					name := ""
					for n, num := range linuxSignals {
						if syscall.Signal(num) == ws.Signal() {
							name = n
						}
					}
					ch.SendRequest("exit-signal", false, ssh.Marshal(&struct {
						Signal     string
						CoreDumped bool
						Error      string
						Lang       string
					}{Signal: name}))
				} else {
					ch.SendRequest("exit-status", false, ssh.Marshal(&struct{ Status uint32 }{uint32(ws.ExitStatus())}))
				}
				ch.Close()
			}()
		case "signal":
			var p struct{ Signal string }
			if err := ssh.Unmarshal(req.Payload, &p); err == nil && cmd != nil {
				if n, ok := linuxSignals[p.Signal]; ok {
					syscall.Kill(-cmd.Process.Pid, syscall.Signal(n))
				}
			}
			if req.WantReply {
				req.Reply(true, nil)
			}
		case "pty-req", "env", "window-change":
			if req.WantReply {
				req.Reply(true, nil)
			}
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
}
