package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

// hostileGuest is a fake for a hostile guest's agent: a real unix socket at
// the VM dir's agent.sock that does Firecracker's vsock handshake, answers
// health honestly and ports with whatever ports writes.
func hostileGuest(t *testing.T, ports func(id string, w io.Writer)) store.VMRecord {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgr-ports-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", vmdir.Dir(dir).AgentSock())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				io.WriteString(c, "OK 1073741824\n")
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var req agent.Request
					if json.Unmarshal(line, &req) != nil {
						continue
					}
					if req.Op == agent.OpHealth {
						io.WriteString(c, `{"v":1,"id":"`+req.ID+`","ok":true,"result":{"agent_version":"evil","protocol":1}}`+"\n")
						continue
					}
					ports(req.ID, c)
				}
			}()
		}
	}()
	return store.VMRecord{Name: "hostile", GuestIP: "172.30.0.66", State: api.StateRunning, Runtime: store.RuntimeRecord{Dir: dir}}
}

// TestPortsHostileGuestHugeReply: the 16 MiB reply of 5.6 M empty listeners
// that once took the daemon past 2 GiB of heap (and a 341 MiB RPC answer)
// becomes a one-line error for that VM, quickly and in bounded memory.
func TestPortsHostileGuestHugeReply(t *testing.T) {
	body := make([]byte, 0, 16<<20)
	body = append(body, `{"listeners":[{}`...)
	for len(body) < 16<<20-256 {
		body = append(body, `,{}`...)
	}
	body = append(body, "]}}\n"...)
	rec := hostileGuest(t, func(id string, w io.Writer) {
		io.WriteString(w, `{"v":1,"id":"`+id+`","ok":true,"result":`)
		w.Write(body)
	})
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	res := (&Service{}).portsBounded(context.Background(), rec)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if len(res.Listeners) != 0 || !strings.Contains(res.Error, "reply line longer than") {
		t.Fatalf("got %d listeners, error %.200q", len(res.Listeners), res.Error)
	}
	if took > 3*time.Second {
		t.Errorf("took %v", took)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("allocated %d MiB", alloc>>20)
	}
}

// TestPortsHostileGuestNeverFinishes: an agent that trickles a reply that
// never ends gives that VM an error once the time box is up.
func TestPortsHostileGuestNeverFinishes(t *testing.T) {
	old := portsTimeout
	portsTimeout = 300 * time.Millisecond
	defer func() { portsTimeout = old }()
	rec := hostileGuest(t, func(id string, w io.Writer) {
		io.WriteString(w, `{"v":1,"id":"`+id+`","ok":true,"result":{"listeners":[`)
		for {
			if _, err := io.WriteString(w, `{"proto":"tcp","address":"10.0.0.1","port":80},`); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	start := time.Now()
	res := (&Service{}).portsBounded(context.Background(), rec)
	if res.Error == "" || len(res.Listeners) != 0 {
		t.Fatalf("got %d listeners, error %q", len(res.Listeners), res.Error)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a 300ms time box ended after %v", took)
	}
	t.Logf("error: %s", res.Error)
}
