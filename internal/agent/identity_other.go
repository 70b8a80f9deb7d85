//go:build !linux

package agent

import (
	"net"
	"net/netip"
	"syscall"
)

func sethostname(string) error                            { return errNoRefresh }
func linkDown(string) error                               { return errNoRefresh }
func linkUp(string) error                                 { return errNoRefresh }
func setMAC(string, net.HardwareAddr) error               { return errNoRefresh }
func addrsV4(string) ([]netip.Prefix, error)              { return nil, errNoRefresh }
func addrDel(string, netip.Prefix) error                  { return errNoRefresh }
func addrAdd(string, netip.Prefix) error                  { return errNoRefresh }
func defaultRoute(string, netip.Addr) error               { return errNoRefresh }
func announce(string, net.HardwareAddr, netip.Addr) error { return errNoRefresh }
func signalPID(int, syscall.Signal) error                 { return errNoRefresh }
func startDaemon(string, []string, string) error          { return errNoRefresh }
