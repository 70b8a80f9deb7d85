// Package client is the CLI's typed door to the owner daemon: it frames
// requests, maps wire error codes back to errdefs classes (keeping the op id)
// and, in user mode, starts or replaces the daemon when needed — one CLI at
// a time, under a lock file beside the socket (bangerd.autostart.lock).
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/safesock"
)

// Client talks to one daemon socket.
type Client struct {
	Socket string
	// Name is what the server is called in errors ("daemon" by default).
	Name   string
	nextID atomic.Uint64
}

func (c *Client) name() string {
	if c.Name == "" {
		return "daemon"
	}
	return c.Name
}

// New returns a client for the daemon at socket.
func New(socket string) *Client { return &Client{Socket: socket} }

// Call invokes method with params and decodes the result into out (if non-nil).
func (c *Client) Call(ctx context.Context, method string, params, out any) error {
	conn, err := safesock.Dial(ctx, c.Socket)
	if err != nil {
		return &errdefs.Error{Code: errdefs.Unavailable, Msg: fmt.Sprintf("%s not reachable at %s: %v", c.name(), c.Socket, err)}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	return c.roundTrip(ctx, conn, method, params, out)
}

func (c *Client) roundTrip(ctx context.Context, conn net.Conn, method string, params, out any) error {
	req := api.Request{V: api.ProtocolVersion, ID: c.nextID.Add(1), Method: method, OpID: logging.OpID(ctx)}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return err
		}
		req.Params = raw
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("send %s: %w", method, err)
	}
	var resp api.Response
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &errdefs.Error{Code: errdefs.Unavailable, Msg: fmt.Sprintf("no answer from the %s for %s: %v", c.name(), method, err)}
	}
	if resp.Error != nil {
		return FromWire(resp.Error)
	}
	if out != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, out); err != nil {
			return fmt.Errorf("decode %s result: %w", method, err)
		}
	}
	return nil
}

// FromWire converts a wire error to an errdefs error.
func FromWire(w *api.WireError) error {
	return &errdefs.Error{Code: errdefs.Code(w.Code), Msg: w.Message, OpID: w.OpID}
}

// Ping returns the daemon's build tuple.
func (c *Client) Ping(ctx context.Context) (api.PingResult, error) {
	var r api.PingResult
	err := c.Call(ctx, api.MethodPing, nil, &r)
	return r, err
}
