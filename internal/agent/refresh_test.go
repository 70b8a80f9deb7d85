package agent

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain keeps every test of this package off the host's clock and RNG:
// refresh's system calls are replaced by recorders. identity's are replaced
// by ones that refuse, under an empty root, so that no test (the fuzzer
// included) touches the host's files, hostname, network or sshd; identity's
// own tests install a fake guest.
func TestMain(m *testing.M) {
	refreshHooks.addEntropy = func(b []byte) error { testRefresh.entropy = append([]byte(nil), b...); return nil }
	refreshHooks.setClock = func(t time.Time) (int64, error) { testRefresh.clock = t; return time.Until(t).Nanoseconds(), nil }
	root, err := os.MkdirTemp("", "banger-agent-test-")
	if err != nil {
		panic(err)
	}
	identityHooks = refusingIdentityHooks(root)
	code := m.Run()
	os.RemoveAll(root)
	os.Exit(code)
}

var testRefresh struct {
	entropy []byte
	clock   time.Time
}

// TestRefresh: the entropy goes in before the clock moves, limits are
// enforced, and the result reports the step.
func TestRefresh(t *testing.T) {
	want := time.Now().Add(3 * time.Hour)
	ent := make([]byte, 64)
	for i := range ent {
		ent[i] = byte(i)
	}
	args, _ := json.Marshal(RefreshArgs{TimeUnixNano: want.UnixNano(), Entropy: ent})
	resp := handle([]byte(`{"v":2,"id":"r","op":"refresh","args":` + string(args) + `}`))
	var r RefreshResult
	if !resp.OK || json.Unmarshal(resp.Result, &r) != nil || r.EntropyBytes != 64 || r.ClockStepNanos < int64(2*time.Hour) {
		t.Fatalf("refresh: %+v %s", resp, resp.Result)
	}
	if !testRefresh.clock.Equal(time.Unix(0, want.UnixNano())) || string(testRefresh.entropy) != string(ent) {
		t.Fatalf("hooks got clock %v, %d bytes", testRefresh.clock, len(testRefresh.entropy))
	}
	for _, c := range []struct{ args, want string }{
		{`{"time_unix_nano":` + jsonInt(want.UnixNano()) + `,"entropy":"` + strings.Repeat("A", 800) + `"}`, "refresh: entropy must be 32-512 bytes, got 600"},
		{`{"time_unix_nano":1000,"entropy":"` + strings.Repeat("A", 44) + `"}`, "refresh: time 1970-01-01T00:00:00Z is before 2024-01-01"},
		{`{"time_unix_nano":"soon"}`, "refresh: bad args: "},
	} {
		resp := handle([]byte(`{"v":2,"id":"r","op":"refresh","args":` + c.args + `}`))
		if resp.OK || !strings.HasPrefix(resp.Error, c.want) {
			t.Errorf("refresh %s: %+v, want %q", c.args, resp, c.want)
		}
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }
