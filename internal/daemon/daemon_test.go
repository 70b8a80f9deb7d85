package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/rpcserver"
	"github.com/banger-dev/banger/internal/safesock"
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
		api.MethodVMStats,
		api.MethodVMStop,
		api.MethodVMWorkspaceRecord,
	}
	if got := d.srv.Methods(); !reflect.DeepEqual(got, want) {
		t.Fatalf("methods %v, want %v", got, want)
	}
}

// TestParamsDecodedStrictly: every method that takes params refuses an
// unknown field as bad_request before any service runs (the services are
// nil here); the methods without params ignore what they are sent.
func TestParamsDecodedStrictly(t *testing.T) {
	d := &Daemon{}
	d.srv = rpcserver.New(slog.New(slog.NewTextHandler(io.Discard, nil)), uint32(os.Geteuid()))
	d.register()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := safesock.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go d.srv.Serve(ln)
	t.Cleanup(func() { d.srv.Shutdown(context.Background()) })
	noParams := map[string]bool{
		api.MethodPing: true, api.MethodDaemonStatus: true, api.MethodDaemonShutdown: true,
		api.MethodOperationsList: true, api.MethodDaemonDoctor: true, api.MethodVMPrune: true,
		api.MethodImageList: true, api.MethodImageCatalog: true,
		api.MethodKernelList: true, api.MethodKernelCatalog: true,
	}
	c := client.New(sock)
	for _, m := range d.srv.Methods() {
		if noParams[m] {
			continue
		}
		err := c.Call(context.Background(), m, map[string]any{"bogus": 1}, nil)
		if errdefs.CodeOf(err) != errdefs.BadRequest || err.Error() != `bad parameters: json: unknown field "bogus"` {
			t.Errorf("%s: %v", m, err)
		}
	}
}
