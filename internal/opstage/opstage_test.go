package opstage

import (
	"context"
	"slices"
	"testing"
	"time"
)

func TestSetReachesTheFuncOfItsContext(t *testing.T) {
	var got []string
	ctx := With(context.Background(), func(stage string) { got = append(got, stage) })
	Set(ctx, "resolving image")
	// A derived context (a timeout, a logger) still reaches the Func.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	Set(wctx, "booting")
	if want := []string{"resolving image", "booting"}; !slices.Equal(got, want) {
		t.Fatalf("stages %q, want %q", got, want)
	}
}

func TestSetWithoutAFuncIsANoOp(t *testing.T) {
	Set(context.Background(), "booting") // must not panic
	ctx := With(context.Background(), nil)
	if ctx != context.Background() {
		t.Fatal("With(nil) changed the context")
	}
	Set(ctx, "booting")
}

func TestInnerFuncWins(t *testing.T) {
	var outer, inner []string
	ctx := With(context.Background(), func(s string) { outer = append(outer, s) })
	ctx2 := With(ctx, func(s string) { inner = append(inner, s) })
	Set(ctx2, "a")
	Set(ctx, "b")
	if !slices.Equal(inner, []string{"a"}) || !slices.Equal(outer, []string{"b"}) {
		t.Fatalf("outer %q inner %q", outer, inner)
	}
}
