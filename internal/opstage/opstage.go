// Package opstage carries "what is this operation doing now" from the code
// doing the work to whoever reports it, through the context: the RPC server
// puts a Func in each call's context (internal/rpcserver, for
// daemon.operations.list and the CLI's progress display), and the services
// name their stages with Set. Any package may import it; it imports nothing
// of banger's.
package opstage

import "context"

// Func receives the stages of one operation, in order.
type Func func(stage string)

type key struct{}

// With returns ctx carrying f: Set calls on ctx, or on contexts derived
// from it, go to f. A nil f leaves ctx as it is.
func With(ctx context.Context, f Func) context.Context {
	if f == nil {
		return ctx
	}
	return context.WithValue(ctx, key{}, f)
}

// Set tells ctx's operation that it has reached stage ("booting",
// "waiting for ssh"). It is a no-op when no Func is in ctx (outside an RPC
// call, in tests, in background work).
func Set(ctx context.Context, stage string) {
	if f, ok := ctx.Value(key{}).(Func); ok {
		f(stage)
	}
}
