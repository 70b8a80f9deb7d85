package fcvmm

import (
	"fmt"
	"os"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/go-openapi/strfmt"
)

// machineReq is the body of PUT and PATCH /machine-config: the SDK's model
// plus what Firecracker v1.14.1 added (huge_pages, more CPU templates).
type machineReq struct {
	VcpuCount       *int64  `json:"vcpu_count"`
	MemSizeMib      *int64  `json:"mem_size_mib"`
	Smt             *bool   `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
}

func (v *vmm) putMachineConfig(body []byte) (int, any, *apiError) {
	return v.machineConfig(body, false)
}

func (v *vmm) patchMachineConfig(body []byte) (int, any, *apiError) {
	return v.machineConfig(body, true)
}

func (v *vmm) machineConfig(body []byte, patch bool) (int, any, *apiError) {
	var req machineReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if !patch {
		switch {
		case req.VcpuCount == nil:
			return 0, nil, deserializeError("missing field `vcpu_count`")
		case req.MemSizeMib == nil:
			return 0, nil, deserializeError("missing field `mem_size_mib`")
		}
	}
	if req.VcpuCount != nil && (*req.VcpuCount < 0 || *req.VcpuCount > 255) {
		return 0, nil, deserializeError(fmt.Sprintf("invalid value: integer `%d`, expected u8", *req.VcpuCount))
	}
	if req.MemSizeMib != nil && *req.MemSizeMib < 0 {
		return 0, nil, deserializeError(fmt.Sprintf("invalid value: integer `%d`, expected usize", *req.MemSizeMib))
	}
	if req.CPUTemplate != nil {
		switch *req.CPUTemplate {
		case "C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None":
		default:
			return 0, nil, deserializeError(fmt.Sprintf("unknown variant `%s`, expected one of `C3`, `T2`, `T2S`, `None`, `T2CL`, `T2A`, `V1N1`", *req.CPUTemplate))
		}
	}
	if req.HugePages != nil && *req.HugePages != "None" && *req.HugePages != "2M" {
		return 0, nil, deserializeError(fmt.Sprintf("unknown variant `%s`, expected `None` or `2M`", *req.HugePages))
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	m := v.cfg.machine
	if !patch {
		m = defaultMachine
	}
	if req.VcpuCount != nil {
		m.VcpuCount = *req.VcpuCount
	}
	if req.MemSizeMib != nil {
		m.MemSizeMib = *req.MemSizeMib
	}
	if req.Smt != nil {
		m.Smt = *req.Smt
	}
	if req.CPUTemplate != nil {
		m.CPUTemplate = *req.CPUTemplate
		if m.CPUTemplate == "None" {
			m.CPUTemplate = ""
		}
	}
	if req.TrackDirtyPages != nil {
		m.TrackDirtyPages = *req.TrackDirtyPages
	}
	if req.HugePages != nil {
		m.HugePages = *req.HugePages
	}
	if m.VcpuCount < 1 || m.VcpuCount > 32 || (m.Smt && m.VcpuCount > 1 && m.VcpuCount%2 == 1) {
		return 0, nil, badRequest("Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if m.MemSizeMib == 0 || (m.HugePages == "2M" && m.MemSizeMib%2 != 0) {
		return 0, nil, badRequest("Machine config error: The memory size (MiB) is invalid.")
	}
	// The SDK's schema, as a backstop (its CPU template enum predates
	// Firecracker v1.14's, so the template is checked above instead).
	sdk := models.MachineConfiguration{VcpuCount: &m.VcpuCount, MemSizeMib: &m.MemSizeMib, Smt: &m.Smt, TrackDirtyPages: m.TrackDirtyPages}
	if err := sdk.Validate(strfmt.Default); err != nil {
		return 0, nil, deserializeError(validationMessage(err))
	}
	v.cfg.machine = m
	return 0, nil, nil
}

type bootReq struct {
	models.BootSource
}

// putBootSource is PUT /boot-source; the kernel and initrd are opened now.
func (v *vmm) putBootSource(body []byte) (int, any, *apiError) {
	var req bootReq
	raw, err := decodeBody(body, &req)
	if err != nil {
		return 0, nil, err.(*apiError)
	}
	if aerr := validateModel(&req.BootSource); aerr != nil {
		return 0, nil, aerr
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	b := &bootCfg{kernelPath: *req.KernelImagePath, initrdPath: req.InitrdPath}
	if _, ok := raw["boot_args"]; ok && string(raw["boot_args"]) != "null" {
		s := req.BootArgs
		b.bootArgs = &s
	}
	kf, oerr := os.Open(b.kernelPath)
	if oerr != nil {
		return 0, nil, badRequest("Boot source error: The kernel file cannot be opened: %s", rustIOError(oerr))
	}
	b.kernel = kf
	if b.initrdPath != "" {
		f, oerr := os.Open(b.initrdPath)
		if oerr != nil {
			kf.Close()
			return 0, nil, badRequest("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. %s", rustIOError(oerr))
		}
		b.initrd = f
	}
	args := defaultBootArgs
	if b.bootArgs != nil {
		args = *b.bootArgs
	}
	if cerr := checkCmdline(args); cerr != nil {
		b.close()
		return 0, nil, badRequest("Boot source error: The kernel command line is invalid: %s", cerr.Error())
	}
	if v.cfg.boot != nil {
		v.cfg.boot.close()
	}
	v.cfg.boot = b
	return 0, nil, nil
}

func (b *bootCfg) close() {
	if b.kernel != nil {
		b.kernel.Close()
	}
	if b.initrd != nil {
		b.initrd.Close()
	}
}
