//go:build !linux

package agent

import (
	"errors"
	"time"
)

var errNoRefresh = errors.New("not supported on this system")

func addEntropy([]byte) error { return errNoRefresh }

func setClock(time.Time) (int64, error) { return 0, errNoRefresh }
