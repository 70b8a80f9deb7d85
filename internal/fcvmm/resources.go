package fcvmm

import (
	"encoding/json"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
)

// The smaller pre-boot resources: PUT /logger, /metrics, /entropy and
// /serial.

type loggerReq struct {
	models.Logger
	Module *string `json:"module"`
}

func (v *vmm) putLogger(body []byte) (int, any, *apiError) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err == nil {
		// Firecracker's level is case-insensitive; the SDK's enum is not.
		if l, ok := raw["level"]; ok {
			var s string
			if json.Unmarshal(l, &s) == nil {
				if _, err := parseLevel(s); err != nil {
					return 0, nil, deserializeError(err.Error())
				}
			}
		}
	}
	var req loggerReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	var lv *level
	if req.Level != nil {
		l, _ := parseLevel(*req.Level)
		lv = &l
		req.Level = nil
	}
	if e := validateModel(&req.Logger, "log_path"); e != nil {
		return 0, nil, e
	}
	if v.started {
		return 0, nil, errPostBoot
	}
	if err := v.log.configure(req.LogPath, lv, req.ShowLevel, req.ShowLogOrigin); err != nil {
		return 0, nil, badRequest("Logger error: %s", err.Error())
	}
	v.log.info("fc_api", "Running Firecracker v%s", firecrackerVers)
	return 0, nil, nil
}

func (v *vmm) putMetrics(body []byte) (int, any, *apiError) {
	var req models.Metrics
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if v.started {
		return 0, nil, errPostBoot
	}
	if err := v.met.configure(*req.MetricsPath); err != nil {
		return 0, nil, badRequest("Metrics error: %s", err.Error())
	}
	return 0, nil, nil
}

type entropyReq struct {
	RateLimiter *models.RateLimiter `json:"rate_limiter"`
}

func (v *vmm) putEntropy(body []byte) (int, any, *apiError) {
	var req entropyReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if req.RateLimiter != nil {
		if e := validateModel(req.RateLimiter); e != nil {
			return 0, nil, e
		}
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	v.cfg.entropy = true // the virtio-rng device is always there
	return 0, nil, nil
}

type serialReq struct {
	SerialOutPath *string `json:"serial_out_path"`
}

func (v *vmm) putSerial(body []byte) (int, any, *apiError) {
	var req serialReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if v.started {
		return 0, nil, errPostBoot
	}
	v.cfg.serialOut = ""
	if req.SerialOutPath != nil {
		v.cfg.serialOut = *req.SerialOutPath
	}
	return 0, nil, nil
}
