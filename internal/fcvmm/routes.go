package fcvmm

// handler answers one routed request.
type handler func(v *vmm, r request) (int, any, *apiError)

// The API's routes by method and first path token, as Firecracker's
// ParsedRequest::try_from has them. A handler that finds no route for the
// rest of the path answers r.invalid(), as Firecracker does.
var (
	getRoutes = map[string]handler{
		"":               (*vmm).getInstance,
		"balloon":        (*vmm).getBalloon,
		"version":        (*vmm).getVersion,
		"vm":             (*vmm).getVM,
		"machine-config": (*vmm).getMachineConfig,
		"mmds":           (*vmm).getMMDS,
		"hotplug":        (*vmm).getHotplug,
	}
	putRoutes = map[string]handler{
		"actions":            withBody((*vmm).putActions),
		"boot-source":        withBody((*vmm).putBootSource),
		"drives":             withBodyAndID((*vmm).putDrive),
		"logger":             withBody((*vmm).putLogger),
		"machine-config":     withBody((*vmm).putMachineConfig),
		"metrics":            withBody((*vmm).putMetrics),
		"network-interfaces": withBodyAndID((*vmm).putNetwork),
		"entropy":            withBody((*vmm).putEntropy),
		"serial":             withBody((*vmm).putSerial),
		"vsock":              withBody((*vmm).putVsock),
		"balloon":            unsupportedDevice("the balloon device"),
		"mmds":               (*vmm).putMMDS,
		"cpu-config":         unsupportedDevice("a custom CPU template"),
		"pmem":               (*vmm).putPmem,
		"snapshot":           (*vmm).putSnapshot,
		"hotplug":            (*vmm).putHotplug,
	}
	// PATCH /balloon is route's own: it may come without a body.
	patchRoutes = map[string]handler{
		"drives":             withBodyAndID((*vmm).patchDrive),
		"machine-config":     withBody((*vmm).patchMachineConfig),
		"mmds":               (*vmm).patchMMDS,
		"network-interfaces": withBodyAndID((*vmm).patchNetwork),
		"vm":                 withBody((*vmm).patchVM),
		"hotplug":            (*vmm).patchHotplug,
	}
)

// withBody routes to a handler of the body alone.
func withBody(f func(*vmm, []byte) (int, any, *apiError)) handler {
	return func(v *vmm, r request) (int, any, *apiError) { return f(v, r.body) }
}

// withBodyAndID routes to a handler of the body and the path's resource id.
func withBodyAndID(f func(*vmm, []byte, *string) (int, any, *apiError)) handler {
	return func(v *vmm, r request) (int, any, *apiError) { return f(v, r.body, r.next) }
}

// unsupportedDevice routes to v.unsupported(what).
func unsupportedDevice(what string) handler {
	return func(v *vmm, _ request) (int, any, *apiError) { return v.unsupported(what) }
}

// getInstance is GET /: the instance's id, state and version.
func (v *vmm) getInstance(request) (int, any, *apiError) {
	return 200, v.instanceInfo(), nil
}

// getVersion is GET /version.
func (v *vmm) getVersion(request) (int, any, *apiError) {
	return 200, map[string]string{"firecracker_version": firecrackerVers}, nil
}

// getMachineConfig is GET /machine-config.
func (v *vmm) getMachineConfig(request) (int, any, *apiError) {
	return 200, v.cfg.machine, nil
}

// getVM is GET /vm/config.
func (v *vmm) getVM(r request) (int, any, *apiError) {
	if r.nextIs("config") {
		return 200, v.fullConfig(), nil
	}
	return r.invalid()
}

// putSnapshot is PUT /snapshot/create and /snapshot/load.
func (v *vmm) putSnapshot(r request) (int, any, *apiError) {
	switch {
	case r.nextIs("create"):
		return v.putSnapshotCreate(r.body)
	case r.nextIs("load"):
		return v.putSnapshotLoad(r.body)
	case r.next == nil:
		return 0, nil, badRequest("Missing snapshot operation type.")
	}
	return 0, nil, badRequest("Invalid request method and/or path: PUT /snapshot/%s.", *r.next)
}
