package rpcserver

import (
	"context"
	"encoding/json"
)

// Typed turns f into a Handler: the call's params are decoded strictly into
// Req (Decode: unknown fields refused, bad_request on any failure) before f
// runs, and f's result is the call's result. Absent params decode as {}.
func Typed[Req, Resp any](f func(context.Context, Req) (Resp, error)) Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var req Req
		if err := Decode(raw, &req); err != nil {
			return nil, err
		}
		return f(ctx, req)
	}
}

// TypedNoResult is Typed for an f that returns only an error: the call's
// result is the empty object {}.
func TypedNoResult[Req any](f func(context.Context, Req) error) Handler {
	return Typed(func(ctx context.Context, req Req) (struct{}, error) {
		return struct{}{}, f(ctx, req)
	})
}

// NoParams turns f, a method without parameters, into a Handler. The
// call's params are ignored, not decoded.
func NoParams[Resp any](f func(context.Context) (Resp, error)) Handler {
	return func(ctx context.Context, _ json.RawMessage) (any, error) {
		return f(ctx)
	}
}
