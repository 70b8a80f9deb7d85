package daemon

import (
	"reflect"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpcserver"
)

// TestHandlerTablePinned fails when a method is added or removed without
// updating the documented list (docs/ARCHITECTURE.md, "RPC methods").
func TestHandlerTablePinned(t *testing.T) {
	d := &Daemon{}
	d.srv = rpcserver.New(nil)
	d.register()
	want := []string{
		api.MethodDaemonDoctor,
		api.MethodOperationsList,
		api.MethodDaemonShutdown,
		api.MethodDaemonStatus,
		api.MethodImageBuild,
		api.MethodImageCachePrune,
		api.MethodImageCatalog,
		api.MethodImageDelete,
		api.MethodImageDerive,
		api.MethodImageList,
		api.MethodImagePromote,
		api.MethodImagePull,
		api.MethodImageRegister,
		api.MethodImageShow,
		api.MethodImageWarm,
		api.MethodKernelCatalog,
		api.MethodKernelDelete,
		api.MethodKernelImport,
		api.MethodKernelList,
		api.MethodKernelPull,
		api.MethodKernelShow,
		api.MethodPing,
		api.MethodVMCreate,
		api.MethodVMDelete,
		api.MethodVMFork,
		api.MethodVMKill,
		api.MethodVMList,
		api.MethodVMLogs,
		api.MethodVMPark,
		api.MethodVMPause,
		api.MethodVMPorts,
		api.MethodVMPrune,
		api.MethodVMRestart,
		api.MethodVMResume,
		api.MethodVMSet,
		api.MethodVMShow,
		api.MethodVMSSHInfo,
		api.MethodVMStart,
		api.MethodVMStop,
		api.MethodVMWorkspaceRecord,
	}
	if got := d.srv.Methods(); !reflect.DeepEqual(got, want) {
		t.Fatalf("methods %v, want %v", got, want)
	}
}
