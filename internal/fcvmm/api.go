package fcvmm

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Phase errors, word for word Firecracker's.
var (
	errPostBoot = badRequest("The requested operation is not supported after starting the microVM.")
	errPreBoot  = badRequest("The requested operation is not supported before starting the microVM.")
)

func notSupported(what string) *apiError {
	return badRequest("The requested operation is not supported: %s is not supported by banger-vmm", what)
}

// ServeHTTP answers one API request, holding the VMM lock for its whole
// duration: Firecracker's API thread also handles requests one at a time.
func (v *vmm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if v.sup.isStopping() {
		// A signal is ending the VMM: the connection ends unanswered, as
		// it would with Firecracker, which dies at once.
		panic(http.ErrAbortHandler)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, v.maxBody+1))
	if err != nil {
		v.reply(w, 0, nil, badRequest("%v", err))
		return
	}
	if int64(len(body)) > v.maxBody {
		size := r.ContentLength
		if size < int64(len(body)) {
			size = int64(len(body))
		}
		v.reply(w, 0, nil, badRequest("Request payload with size %d is larger than the limit of %d allowed by server.", size, v.maxBody))
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sup.isStopping() {
		panic(http.ErrAbortHandler) // the signal came while this request waited
	}
	if len(body) > 0 {
		v.log.info("fc_api", "The API server received a %s request on %q with body %q.", rustMethod(r.Method), r.URL.Path, string(body))
	} else {
		v.log.info("fc_api", "The API server received a %s request on %q.", rustMethod(r.Method), r.URL.Path)
	}
	v.deprecation = ""
	status, out, aerr := v.route(r.Method, r.URL.Path, body)
	v.met.count(r.Method+" "+firstToken(r.URL.Path), aerr != nil)
	if v.deprecation != "" {
		v.log.warn("fc_api", "%s", v.deprecation)
		w.Header().Set("Deprecation", "true")
	}
	v.reply(w, status, out, aerr)
	if v.fatal {
		// Firecracker answers a failed snapshot load, then exits.
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		v.log.errorf("fc_main", "Firecracker exiting with error. exit_code=%d", exitGeneric)
		v.sup.finish(exitGeneric)
	}
}

func rustMethod(m string) string {
	if m == "" {
		return m
	}
	return m[:1] + strings.ToLower(m[1:])
}

func firstToken(path string) string {
	t, _, _ := strings.Cut(strings.TrimLeft(path, "/"), "/")
	return t
}

// reply writes Firecracker's response shapes: 204 without a body, 200 with
// JSON, or an error with {"fault_message": ...}; every response carries
// "Server: Firecracker API" and every body "Content-Type: application/json".
func (v *vmm) reply(w http.ResponseWriter, status int, out any, aerr *apiError) {
	h := w.Header()
	h.Set("Server", "Firecracker API")
	if aerr != nil {
		b, _ := json.Marshal(map[string]string{"fault_message": aerr.msg})
		st := aerr.status
		if st == 0 {
			st = http.StatusBadRequest
		}
		v.log.errorf("fc_api", "Received Error. Status code: %d %s. Message: %s", st, http.StatusText(st), aerr.msg)
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", fmt.Sprint(len(b)))
		w.WriteHeader(st)
		w.Write(b)
		return
	}
	if out == nil {
		v.log.info("fc_api", "The request was executed successfully. Status code: 204 No Content.")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	b, _ := json.Marshal(out)
	v.log.info("fc_api", "The request was executed successfully. Status code: 200 OK.")
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// route dispatches like Firecracker's ParsedRequest::try_from: on the method,
// whether there is a body, and the first path token (routes.go has the
// table); the second token is a resource id where one is expected.
func (v *vmm) route(method, uri string, body []byte) (int, any, *apiError) {
	r := parseRequest(method, uri, body)
	var table map[string]handler
	switch method {
	case http.MethodGet:
		if len(body) > 0 {
			return 0, nil, badRequest("GET request cannot have a body.")
		}
		table = getRoutes
	case http.MethodPut:
		if len(body) == 0 {
			return 0, nil, badRequest("Empty PUT request.")
		}
		table = putRoutes
	case http.MethodPatch:
		if r.path == "balloon" {
			// Before the empty-body check: PATCH /balloon/hinting/start
			// and /stop may come without a body.
			return v.patchBalloon(r)
		}
		if len(body) == 0 {
			return 0, nil, badRequest("Empty PATCH request.")
		}
		table = patchRoutes
	}
	if h, ok := table[r.path]; ok {
		return h(v, r)
	}
	return r.invalid()
}

// request is an API request as route sees it.
type request struct {
	method string
	tokens []string // the path's tokens
	path   string   // the first token ("" for /)
	next   *string  // the second token, if any
	body   []byte
}

// parseRequest splits uri into tokens as Firecracker does (split_terminator
// on "/" after the leading slashes: a trailing empty token is dropped).
func parseRequest(method, uri string, body []byte) request {
	tokens := strings.Split(strings.TrimLeft(uri, "/"), "/")
	for len(tokens) > 0 && tokens[len(tokens)-1] == "" {
		tokens = tokens[:len(tokens)-1]
	}
	r := request{method: method, tokens: tokens, body: body}
	if len(tokens) > 0 {
		r.path = tokens[0]
	}
	if len(tokens) > 1 {
		r.next = &tokens[1]
	}
	return r
}

// nextIs reports whether the second path token is s.
func (r request) nextIs(s string) bool { return r.next != nil && *r.next == s }

// invalid is Firecracker's answer to a method and path it has no route for.
func (r request) invalid() (int, any, *apiError) {
	return 0, nil, badRequest("Invalid request method and/or path: %s %s.", r.method, r.path)
}

// checkedID is Firecracker's checked_id for path ids.
func checkedID(id *string) (string, *apiError) {
	if id == nil || *id == "" {
		return "", badRequest("The ID cannot be empty.")
	}
	for _, c := range *id {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return "", badRequest("API Resource IDs can only contain alphanumeric characters and underscores.")
		}
	}
	return *id, nil
}

var errIDMismatch = badRequest("The id from the path does not match the id from the body!")
