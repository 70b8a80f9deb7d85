package rpcserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/safesock"
)

type greetReq struct {
	Name string `json:"name"`
}

type greetResp struct {
	Greeting string `json:"greeting"`
}

func greet(_ context.Context, r greetReq) (greetResp, error) {
	if r.Name == "" {
		return greetResp{}, errdefs.New(errdefs.NotFound, "nobody to greet")
	}
	return greetResp{Greeting: "hello " + r.Name}, nil
}

func TestTypedDecodesAndReturnsTheResult(t *testing.T) {
	h := Typed(greet)
	res, err := h(context.Background(), json.RawMessage(`{"name":"vm1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if res != (greetResp{Greeting: "hello vm1"}) {
		t.Fatalf("result %#v", res)
	}
	// Absent params are {}: f runs with the zero request.
	if _, err := h(context.Background(), nil); errdefs.CodeOf(err) != errdefs.NotFound {
		t.Fatalf("absent params: %v", err)
	}
}

func TestTypedDecodesStrictly(t *testing.T) {
	called := false
	h := Typed(func(ctx context.Context, r greetReq) (greetResp, error) {
		called = true
		return greet(ctx, r)
	})
	// The unknown field's message is exact (clients and tests match it);
	// the others are encoding/json's, behind the same prefix.
	for params, want := range map[string]string{
		`{"name":"vm1","evil":true}`: `bad parameters: json: unknown field "evil"`,
		`{"name":1}`:                 `bad parameters: `,
		`[1]`:                        `bad parameters: `,
	} {
		res, err := h(context.Background(), json.RawMessage(params))
		exact := strings.Contains(want, "unknown field")
		if err == nil || errdefs.CodeOf(err) != errdefs.BadRequest ||
			(exact && err.Error() != want) || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: %v (%s), want bad_request %q", params, err, errdefs.CodeOf(err), want)
		}
		if res != nil {
			t.Errorf("%s: result %#v with the error", params, res)
		}
	}
	if called {
		t.Fatal("f ran on params that did not decode")
	}
}

func TestTypedNoResult(t *testing.T) {
	var got greetReq
	boom := errors.New("boom")
	h := TypedNoResult(func(_ context.Context, r greetReq) error {
		got = r
		if r.Name == "fail" {
			return boom
		}
		return nil
	})
	res, err := h(context.Background(), json.RawMessage(`{"name":"vm1"}`))
	if err != nil || got.Name != "vm1" {
		t.Fatalf("got %+v, %v", got, err)
	}
	if b, _ := json.Marshal(res); string(b) != "{}" {
		t.Fatalf("result %s, want {}", b)
	}
	if _, err := h(context.Background(), json.RawMessage(`{"name":"fail"}`)); !errors.Is(err, boom) {
		t.Fatalf("error %v, want boom", err)
	}
	if _, err := h(context.Background(), json.RawMessage(`{"nom":"x"}`)); errdefs.CodeOf(err) != errdefs.BadRequest {
		t.Fatalf("unknown field: %v", err)
	}
}

func TestNoParamsIgnoresParams(t *testing.T) {
	h := NoParams(func(context.Context) ([]string, error) { return []string{"a"}, nil })
	for _, params := range []string{"", `{"anything":1}`, `not json`} {
		res, err := h(context.Background(), json.RawMessage(params))
		if err != nil || !reflect.DeepEqual(res, []string{"a"}) {
			t.Fatalf("%q: %#v, %v", params, res, err)
		}
	}
}

// TestTypedOverTheWire: a refused parameter reaches the client as a
// bad_request answer naming the field, and a good call's result is the
// handler's, marshalled.
func TestTypedOverTheWire(t *testing.T) {
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), 0)
	s.Handle("greet", Typed(greet))
	call := func(params string) api.Response {
		line := `{"v":1,"id":7,"method":"greet","params":` + params + "}\n"
		return s.dispatch([]byte(line), safesock.Cred{})
	}
	resp := call(`{"name":"vm1","evil":1}`)
	if resp.Error == nil || resp.Error.Code != string(errdefs.BadRequest) || resp.Error.Message != `bad parameters: json: unknown field "evil"` {
		t.Fatalf("unknown field: %+v", resp.Error)
	}
	resp = call(`{"name":"vm1"}`)
	if resp.Error != nil || string(resp.Result) != `{"greeting":"hello vm1"}` {
		t.Fatalf("good call: %+v %s", resp.Error, resp.Result)
	}
}
