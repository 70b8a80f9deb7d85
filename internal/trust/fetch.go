package trust

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// StatusError is a server's answer other than 200 OK.
type StatusError struct {
	Status string // e.g. "404 Not Found"
}

func (e *StatusError) Error() string { return "HTTP " + e.Status }

// TooLargeError is a body over its cap (class ErrTooLarge).
type TooLargeError struct {
	// Size is the Content-Length the server announced, or -1 when the cap
	// was crossed while reading.
	Size  int64
	Limit int64
}

func (e *TooLargeError) Error() string {
	if e.Size >= 0 {
		return fmt.Sprintf("%d bytes, over the %d-byte cap", e.Size, e.Limit)
	}
	return fmt.Sprintf("over the %d-byte cap", e.Limit)
}

// Is makes a TooLargeError an ErrTooLarge.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// Get sends a GET for rawURL through hc (nil: http.DefaultClient, which has
// no timeout: bound the time with ctx), with a User-Agent header when
// userAgent is not empty, and returns the response if it is 200 OK. Any
// other answer is a *StatusError (its body closed); an error building or
// sending the request is returned as it is.
func Get(ctx context.Context, hc *http.Client, rawURL, userAgent string) (*http.Response, error) {
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	if userAgent != "" {
		req.Header.Set("User-Agent", userAgent)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, &StatusError{Status: resp.Status}
	}
	return resp, nil
}

// ReadCapped reads resp's body, refusing more than limit bytes with a
// *TooLargeError without reading past limit+1 bytes, and without reading at
// all when Content-Length already says too much. A read error is returned
// as it is. The caller closes the body.
func ReadCapped(resp *http.Response, limit int64) ([]byte, error) {
	if resp.ContentLength > limit {
		return nil, &TooLargeError{Size: resp.ContentLength, Limit: limit}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > limit {
		return nil, &TooLargeError{Size: -1, Limit: limit}
	}
	return body, nil
}
