package trust

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	var agent string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		agent = r.UserAgent()
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	resp, err := Get(context.Background(), srv.Client(), srv.URL+"/f", "banger-test")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if agent != "banger-test" {
		t.Errorf("User-Agent %q", agent)
	}
	if resp, err := Get(context.Background(), srv.Client(), srv.URL+"/f", ""); err != nil || agent == "banger-test" || agent == "" {
		t.Errorf("no user agent given: sent %q, %v", agent, err)
	} else {
		resp.Body.Close()
	}
	_, err = Get(context.Background(), srv.Client(), srv.URL+"/missing", "")
	var se *StatusError
	if !errors.As(err, &se) || se.Status != "404 Not Found" || err.Error() != "HTTP 404 Not Found" {
		t.Fatalf("404: err = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Get(ctx, nil, srv.URL+"/f", ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v", err)
	}
}

func TestReadCapped(t *testing.T) {
	const limit = 8
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := strings.Repeat("x", len(r.URL.Path)-1)
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.Write([]byte(body))
		w.(http.Flusher).Flush()
	}))
	defer srv.Close()
	read := func(path string) ([]byte, error) {
		resp, err := Get(context.Background(), srv.Client(), srv.URL+path, "")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return ReadCapped(resp, limit)
	}
	if b, err := read("/12345678"); err != nil || string(b) != "xxxxxxxx" {
		t.Fatalf("at the cap: %q %v", b, err)
	}
	var big *TooLargeError
	_, err := read("/123456789")
	if !errors.As(err, &big) || big.Size != 9 || big.Limit != limit || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("announced over the cap: %v", err)
	}
	_, err = read("/123456789?chunked=1")
	if !errors.As(err, &big) || big.Size != -1 || !errors.Is(err, ErrTooLarge) || err.Error() != "over the 8-byte cap" {
		t.Fatalf("streamed over the cap: %v", err)
	}
}

func TestRefuse(t *testing.T) {
	cause := context.DeadlineExceeded
	err := RefuseWrap(ErrTooLarge, cause, "index is %d bytes", 9)
	if err.Error() != "index is 9 bytes" || !errors.Is(err, ErrTooLarge) || !errors.Is(err, cause) || !IsRefusal(err) {
		t.Fatalf("RefuseWrap: %v", err)
	}
	if err := Refuse(ErrBadKey, "no"); errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrBadKey) || errors.Unwrap(err) != nil {
		t.Fatalf("Refuse: %v", err)
	}
	if IsRefusal(errors.New("plain")) {
		t.Fatal("a plain error is a refusal")
	}
}
