package fcvmm

import (
	"errors"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
)

// putActions is PUT /actions: InstanceStart, FlushMetrics, SendCtrlAltDel.
func (v *vmm) putActions(body []byte) (int, any, *apiError) {
	var req models.InstanceActionInfo
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	switch *req.ActionType {
	case models.InstanceActionInfoActionTypeInstanceStart:
		if v.started {
			return 0, nil, errPostBoot
		}
		if e := v.startMicroVM(nil); e != nil {
			return 0, nil, e
		}
	case models.InstanceActionInfoActionTypeFlushMetrics:
		if !v.started {
			return 0, nil, errPreBoot
		}
		v.met.flush(v.log.missed.Load())
	case models.InstanceActionInfoActionTypeSendCtrlAltDel:
		if !v.started {
			return 0, nil, errPreBoot
		}
		v.sup.sendCtrlAltDel()
	}
	return 0, nil, nil
}

// patchVM is PATCH /vm: pause or resume the vCPUs.
func (v *vmm) patchVM(body []byte) (int, any, *apiError) {
	var req models.VM
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if !v.started {
		return 0, nil, errPreBoot
	}
	pause := *req.State == models.VMStatePaused
	if pause == v.paused {
		return 0, nil, nil // idempotent, as in Firecracker
	}
	if err := v.sup.setPaused(pause); err != nil {
		if errors.Is(err, errNotRunning) {
			return 0, nil, badRequest("Internal VMM error: the microVM is not running")
		}
		verb := "resume"
		if pause {
			verb = "pause"
		}
		return 0, nil, badRequest("Internal VMM error: failed to %s the microVM: %v", verb, err)
	}
	v.paused = pause
	return 0, nil, nil
}
