package agent

import (
	"fmt"
	"time"
)

// Refresh limits: the host sends 64 bytes; more than 512 is refused, less
// than 32 would not reseed anything worth the name.
const (
	minRefreshEntropy = 32
	maxRefreshEntropy = 512
)

// earliestTime refuses a clock from before this package existed: a host
// asking for 1970 is broken, not right.
var earliestTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// refresh applies RefreshArgs: the entropy first (credited to the kernel's
// pool, then the CRNG reseeded, so nothing reads the snapshot's RNG state
// after this), then the clock.
func refresh(a RefreshArgs) (RefreshResult, error) {
	if n := len(a.Entropy); n < minRefreshEntropy || n > maxRefreshEntropy {
		return RefreshResult{}, fmt.Errorf("refresh: entropy must be %d-%d bytes, got %d", minRefreshEntropy, maxRefreshEntropy, n)
	}
	t := time.Unix(0, a.TimeUnixNano)
	if t.Before(earliestTime) {
		return RefreshResult{}, fmt.Errorf("refresh: time %s is before %s", t.UTC().Format(time.RFC3339), earliestTime.Format("2006-01-02"))
	}
	if err := refreshHooks.addEntropy(a.Entropy); err != nil {
		return RefreshResult{}, fmt.Errorf("refresh: entropy: %w", err)
	}
	step, err := refreshHooks.setClock(t)
	if err != nil {
		return RefreshResult{}, fmt.Errorf("refresh: clock: %w", err)
	}
	return RefreshResult{ClockStepNanos: step, EntropyBytes: len(a.Entropy)}, nil
}

// refreshHooks are the system calls refresh makes. The package's tests
// replace them (they run on the host, often as root: a refresh there would
// step the host's clock); the guest uses these.
var refreshHooks = struct {
	addEntropy func([]byte) error
	setClock   func(time.Time) (int64, error)
}{addEntropy, setClock}
