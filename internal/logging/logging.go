// Package logging sets up log/slog for banger's daemons and carries the
// logger, tagged with the current RPC's op id, in the context.
package logging

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"strings"
)

// New returns a JSON logger at the given level ("debug", "info", ...).
// BANGER_LOG_LEVEL overrides level.
func New(w io.Writer, level string) *slog.Logger {
	if env := os.Getenv("BANGER_LOG_LEVEL"); env != "" {
		level = env
	}
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv}))
}

type ctxKey struct{}
type opKey struct{}

// With stores a logger in ctx.
func With(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, ctxKey{}, l)
}

// From returns the context's logger, or a discarding one.
func From(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(ctxKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// NewOpID mints an op id: "op-" and six hex digits.
func NewOpID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "op-" + hex.EncodeToString(b)
}

// WithOpID tags ctx (and its logger) with an op id.
func WithOpID(ctx context.Context, id string) context.Context {
	ctx = context.WithValue(ctx, opKey{}, id)
	return With(ctx, From(ctx).With("op_id", id))
}

// OpID returns the context's op id, if any.
func OpID(ctx context.Context) string {
	s, _ := ctx.Value(opKey{}).(string)
	return s
}
