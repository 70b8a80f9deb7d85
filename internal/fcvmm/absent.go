package fcvmm

import (
	"encoding/json"
	"fmt"
)

// Resources banger-vmm never has: a balloon, memory hotplug, MMDS, pmem
// and custom CPU templates. Requests that would create one are refused as
// not supported; requests on one get Firecracker's answers for a VMM where
// it was not configured.

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

// noDevice is Firecracker's answer to an operation on a device that was not
// configured: the pre-boot error before boot, the device manager's "not
// found" under the action's prefix after.
func (v *vmm) noDevice(prefix string) (int, any, *apiError) {
	if !v.started {
		return 0, nil, errPreBoot
	}
	return 0, nil, badRequest("%s: Failed perform action on device: Device not found", prefix)
}

// getMMDS is GET /mmds. The data store was never initialised (PUT /mmds is
// not supported): Firecracker answers an empty object then.
func (v *vmm) getMMDS(request) (int, any, *apiError) {
	return 200, map[string]any{}, nil
}

// putMMDS is PUT /mmds and /mmds/config.
func (v *vmm) putMMDS(r request) (int, any, *apiError) {
	switch {
	case r.nextIs("config"):
		return v.unsupported("MMDS")
	case r.next != nil:
		return 0, nil, badRequest("Unrecognized PUT request path `%s`.", *r.next)
	}
	if e := checkJSON(r.body); e != nil {
		return 0, nil, e
	}
	return 0, nil, notSupported("MMDS")
}

// patchMMDS is PATCH /mmds: Firecracker's answer while no PUT /mmds
// initialised the store.
func (v *vmm) patchMMDS(r request) (int, any, *apiError) {
	if e := checkJSON(r.body); e != nil {
		return 0, nil, e
	}
	return 0, nil, badRequest("MMDS error: The MMDS data store is not initialized.")
}

// putPmem is PUT /pmem/{id}.
func (v *vmm) putPmem(r request) (int, any, *apiError) {
	if _, e := checkedID(r.next); e != nil {
		return 0, nil, e
	}
	return v.unsupported("virtio-pmem")
}

// getHotplug is GET /hotplug/memory.
func (v *vmm) getHotplug(r request) (int, any, *apiError) {
	if r.nextIs("memory") {
		return v.noDevice("Internal VMM error")
	}
	return r.invalid()
}

// putHotplug is PUT /hotplug/memory.
func (v *vmm) putHotplug(r request) (int, any, *apiError) {
	if r.nextIs("memory") {
		return v.unsupported("memory hotplug")
	}
	return r.invalid()
}

// patchHotplug is PATCH /hotplug/memory; the body is checked first.
func (v *vmm) patchHotplug(r request) (int, any, *apiError) {
	if !r.nextIs("memory") {
		return r.invalid()
	}
	var req struct {
		RequestedSizeMib *int64 `json:"requested_size_mib"`
	}
	if _, err := decodeBody(r.body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if req.RequestedSizeMib == nil {
		return 0, nil, deserializeError("missing field `requested_size_mib`")
	}
	return v.noDevice("Memory hotplug update error")
}

// getBalloon is GET /balloon[/statistics | /hinting/status] without a
// balloon device.
func (v *vmm) getBalloon(r request) (int, any, *apiError) {
	rest := r.tokens[1:]
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
func (v *vmm) patchBalloon(r request) (int, any, *apiError) {
	rest, body := r.tokens[1:], r.body
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
