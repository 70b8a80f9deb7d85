package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/logging"
)

// withProgress runs call with an op id of its own. On a terminal it shows
// the daemon's current stage for that op (from daemon.operations.list)
// while the call runs longer than a moment.
func (a *app) withProgress(ctx context.Context, c *client.Client, label string, call func(ctx context.Context) error) error {
	opID := logging.NewOpID()
	ctx = logging.WithOpID(ctx, opID)
	if !output.IsTerminal(a.stderr) {
		return call(ctx)
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		start := time.Now()
		shown := false
		spin := []string{"-", "\\", "|", "/"}
		for i := 0; ; i++ {
			select {
			case <-done:
				if shown {
					fmt.Fprint(a.stderr, "\r\x1b[K")
				}
				return
			case <-time.After(250 * time.Millisecond):
			}
			if time.Since(start) < 700*time.Millisecond {
				continue
			}
			stage := ""
			var ops []api.Operation
			pctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if err := c.Call(pctx, api.MethodOperationsList, nil, &ops); err == nil {
				for _, op := range ops {
					if op.OpID == opID {
						stage = op.Stage
					}
				}
			}
			cancel()
			line := fmt.Sprintf("%s %s", spin[i%len(spin)], label)
			if stage != "" {
				line += ": " + stage
			}
			line += fmt.Sprintf(" (%.0fs)", time.Since(start).Seconds())
			fmt.Fprintf(a.stderr, "\r\x1b[K%s", output.Dim(a.stderr, line))
			shown = true
		}
	}()
	err := call(ctx)
	close(done)
	<-finished
	return err
}
