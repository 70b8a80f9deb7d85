// Package api is the versioned wire contract between the banger CLI and the
// owner daemon: the framing, method names and request/response types.
//
// Framing: newline-delimited JSON over a Unix stream socket. Each line is a
// Request; the daemon answers each with one Response line, in order, and
// keeps the connection open for the next request.
package api

import (
	"encoding/json"

	"github.com/banger-dev/banger/internal/buildinfo"
)

// ProtocolVersion is bumped on incompatible wire changes. A request with
// another version gets bad_version.
const ProtocolVersion = 1

// Request is one RPC call.
type Request struct {
	V      int             `json:"v"`
	ID     uint64          `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
	// OpID, when set by the caller (op- and six hex digits), is used as the
	// call's op id, so one id links the CLI, the daemon and the root helper.
	OpID string `json:"op_id,omitempty"`
}

// Response answers one Request.
type Response struct {
	ID     uint64          `json:"id"`
	OpID   string          `json:"op_id"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *WireError      `json:"error,omitempty"`
}

// WireError is an error on the wire.
type WireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	OpID    string `json:"op_id,omitempty"`
}

// Method names. A test pins this list against the daemon's handler table.
const (
	MethodPing           = "ping"
	MethodDaemonStatus   = "daemon.status"
	MethodDaemonDoctor   = "daemon.doctor"
	MethodDaemonShutdown = "daemon.shutdown"
	MethodOperationsList = "daemon.operations.list"
)

// PingResult is the daemon's build tuple.
type PingResult struct {
	Build buildinfo.Info `json:"build"`
	PID   int            `json:"pid"`
}

// DaemonStatus describes the running daemon.
type DaemonStatus struct {
	Running       bool           `json:"running"`
	Build         buildinfo.Info `json:"build"`
	Version       string         `json:"version"`
	PID           int            `json:"pid"`
	StartedAt     string         `json:"started_at"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Socket        string         `json:"socket"`
	Mode          string         `json:"mode"`
	StateDir      string         `json:"state_dir"`
	InFlight      int            `json:"in_flight"`
}

// Operation is one in-flight RPC.
type Operation struct {
	OpID      string  `json:"op_id"`
	Method    string  `json:"method"`
	Stage     string  `json:"stage,omitempty"`
	StartedAt string  `json:"started_at"`
	Seconds   float64 `json:"seconds"`
}

// DoctorCheck is one finding of 'banger doctor'.
type DoctorCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, warn or fail
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Doctor statuses.
const (
	DoctorOK   = "ok"
	DoctorWarn = "warn"
	DoctorFail = "fail"
)
