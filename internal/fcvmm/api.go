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
	if v.isStopping() {
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
	if v.isStopping() {
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
		v.finish(exitGeneric)
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
// the first path token and whether there is a body; the second token is a
// resource id where one is expected.
func (v *vmm) route(method, uri string, body []byte) (int, any, *apiError) {
	tokens := strings.Split(strings.TrimLeft(uri, "/"), "/")
	for len(tokens) > 0 && tokens[len(tokens)-1] == "" {
		tokens = tokens[:len(tokens)-1] // split_terminator drops a trailing empty token
	}
	path := ""
	if len(tokens) > 0 {
		path = tokens[0]
	}
	var next *string
	if len(tokens) > 1 {
		next = &tokens[1]
	}
	nextIs := func(s string) bool { return next != nil && *next == s }
	hasBody := len(body) > 0

	switch method {
	case http.MethodGet:
		if !hasBody {
			switch {
			case path == "":
				return 200, v.instanceInfo(), nil
			case path == "balloon":
				return v.getBalloon(tokens[1:])
			case path == "version":
				return 200, map[string]string{"firecracker_version": firecrackerVers}, nil
			case path == "vm" && nextIs("config"):
				return 200, v.fullConfig(), nil
			case path == "machine-config":
				return 200, v.cfg.machine, nil
			case path == "mmds":
				// The data store was never initialised (PUT /mmds is not
				// supported): Firecracker answers an empty object then.
				return 200, map[string]any{}, nil
			case path == "hotplug" && nextIs("memory"):
				return v.noDevice("Internal VMM error")
			}
		} else {
			return 0, nil, badRequest("GET request cannot have a body.")
		}
	case http.MethodPut:
		if !hasBody {
			return 0, nil, badRequest("Empty PUT request.")
		}
		switch path {
		case "actions":
			return v.putActions(body)
		case "boot-source":
			return v.putBootSource(body)
		case "drives":
			return v.putDrive(body, next)
		case "logger":
			return v.putLogger(body)
		case "machine-config":
			return v.putMachineConfig(body)
		case "metrics":
			return v.putMetrics(body)
		case "network-interfaces":
			return v.putNetwork(body, next)
		case "entropy":
			return v.putEntropy(body)
		case "serial":
			return v.putSerial(body)
		case "vsock":
			return v.putVsock(body)
		case "balloon":
			return v.unsupported("the balloon device")
		case "mmds":
			switch {
			case nextIs("config"):
				return v.unsupported("MMDS")
			case next != nil:
				return 0, nil, badRequest("Unrecognized PUT request path `%s`.", *next)
			}
			if e := checkJSON(body); e != nil {
				return 0, nil, e
			}
			return 0, nil, notSupported("MMDS")
		case "cpu-config":
			return v.unsupported("a custom CPU template")
		case "pmem":
			if _, e := checkedID(next); e != nil {
				return 0, nil, e
			}
			return v.unsupported("virtio-pmem")
		case "snapshot":
			switch {
			case nextIs("create"):
				return v.putSnapshotCreate(body)
			case nextIs("load"):
				return v.putSnapshotLoad(body)
			case next == nil:
				return 0, nil, badRequest("Missing snapshot operation type.")
			}
			return 0, nil, badRequest("Invalid request method and/or path: PUT /snapshot/%s.", *next)
		case "hotplug":
			if nextIs("memory") {
				return v.unsupported("memory hotplug")
			}
		}
	case http.MethodPatch:
		if path == "balloon" {
			return v.patchBalloon(tokens[1:], body)
		}
		if !hasBody {
			return 0, nil, badRequest("Empty PATCH request.")
		}
		switch path {
		case "drives":
			return v.patchDrive(body, next)
		case "machine-config":
			return v.patchMachineConfig(body)
		case "mmds":
			if e := checkJSON(body); e != nil {
				return 0, nil, e
			}
			// Firecracker's answer while no PUT /mmds initialised the store.
			return 0, nil, badRequest("MMDS error: The MMDS data store is not initialized.")
		case "network-interfaces":
			return v.patchNetwork(body, next)
		case "vm":
			return v.patchVM(body)
		case "hotplug":
			if nextIs("memory") {
				var req struct {
					RequestedSizeMib *int64 `json:"requested_size_mib"`
				}
				if _, err := decodeBody(body, &req); err != nil {
					return 0, nil, err.(*apiError)
				}
				if req.RequestedSizeMib == nil {
					return 0, nil, deserializeError("missing field `requested_size_mib`")
				}
				return v.noDevice("Memory hotplug update error")
			}
		}
	}
	return 0, nil, badRequest("Invalid request method and/or path: %s %s.", method, path)
}

// unsupported answers a request that would configure a device banger-vmm
// cannot provide (all of them are pre-boot in Firecracker): the post-boot
// error after boot, as Firecracker checks the phase first, and otherwise
// "not supported", where Firecracker would have accepted it.
func (v *vmm) unsupported(what string) (int, any, *apiError) {
	if v.started {
		return 0, nil, errPostBoot
	}
	return 0, nil, notSupported(what)
}

// Devices banger-vmm never has: a balloon and a memory hotplug device.
// Requests that would create one are refused as not supported; requests on
// the device get Firecracker's answers for a VMM where it was not
// configured.

// noDevice is Firecracker's answer to an operation on a device that was not
// configured: the pre-boot error before boot, the device manager's "not
// found" under the action's prefix after.
func (v *vmm) noDevice(prefix string) (int, any, *apiError) {
	if !v.started {
		return 0, nil, errPreBoot
	}
	return 0, nil, badRequest("%s: Failed perform action on device: Device not found", prefix)
}

// getBalloon is GET /balloon[/statistics | /hinting/status] without a
// balloon device.
func (v *vmm) getBalloon(rest []string) (int, any, *apiError) {
	switch {
	case len(rest) == 0 && !v.started:
		return 0, nil, badRequest("Balloon config error: No balloon device found.")
	case len(rest) == 0 || rest[0] == "statistics":
		return v.noDevice("Internal VMM error")
	case rest[0] != "hinting":
		return 0, nil, badRequest("Unrecognized GET request path `%s`.", rest[0])
	case len(rest) < 2:
		return 0, nil, badRequest("Unrecognized GET request path `/hinting/`.")
	case rest[1] != "status":
		return 0, nil, badRequest("Unrecognized GET request path `/hinting/%s`.", rest[1])
	}
	return v.noDevice("Balloon update error")
}

// patchBalloon is PATCH /balloon[/statistics | /hinting/start | stop]
// without a balloon device; the body is checked first, as Firecracker
// parses it before acting.
func (v *vmm) patchBalloon(rest []string, body []byte) (int, any, *apiError) {
	sub := ""
	if len(rest) > 0 {
		sub = rest[0]
	}
	switch {
	case sub == "statistics" && len(body) > 0:
		var req struct {
			StatsPollingIntervalS *int64 `json:"stats_polling_interval_s"`
		}
		if e := decodeUint(body, &req, "stats_polling_interval_s", &req.StatsPollingIntervalS, 1<<16-1, "u16"); e != nil {
			return 0, nil, e
		}
	case sub == "hinting":
		switch {
		case len(rest) < 2:
			return 0, nil, badRequest("Unrecognized PATCH request path `/hinting/`.")
		case rest[1] == "start":
			if len(body) > 0 {
				var req struct {
					AcknowledgeOnStop *bool `json:"acknowledge_on_stop"`
				}
				if err := json.Unmarshal(body, &req); err != nil {
					return 0, nil, deserializeError(serdeMessage(err))
				}
			}
		case rest[1] != "stop":
			return 0, nil, badRequest("Unrecognized PATCH request path `/hinting/%s`.", rest[1])
		}
	case len(body) > 0:
		var req struct {
			AmountMib *int64 `json:"amount_mib"`
		}
		if e := decodeUint(body, &req, "amount_mib", &req.AmountMib, 1<<32-1, "u32"); e != nil {
			return 0, nil, e
		}
	default:
		return 0, nil, badRequest("Empty PATCH request.")
	}
	return v.noDevice("Balloon update error")
}

// decodeUint decodes body into dst (a struct whose only field is *val,
// named field) and checks the value is present and fits an unsigned type.
func decodeUint(body []byte, dst any, field string, val **int64, max int64, typ string) *apiError {
	if _, err := decodeBody(body, dst); err != nil {
		return err.(*apiError)
	}
	switch {
	case *val == nil:
		return deserializeError(fmt.Sprintf("missing field `%s`", field))
	case **val < 0 || **val > max:
		return deserializeError(fmt.Sprintf("invalid value: integer `%d`, expected %s", **val, typ))
	}
	return nil
}

// checkJSON checks that body is JSON, as Firecracker parses an MMDS body
// (any JSON value) before acting on it.
func checkJSON(body []byte) *apiError {
	var x any
	if err := json.Unmarshal(body, &x); err != nil {
		return deserializeError(serdeMessage(err))
	}
	return nil
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
