package fcvmm

import (
	"crypto/rand"
	"fmt"
	"net"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
)

// putNetwork is PUT /network-interfaces/{iface_id}; the tap is opened
// now, as Firecracker does.
func (v *vmm) putNetwork(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req models.NetworkInterface
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	mac := ""
	if req.GuestMac != "" {
		hw, err := net.ParseMAC(req.GuestMac)
		if err != nil || len(hw) != 6 {
			return 0, nil, deserializeError(fmt.Sprintf("Invalid MAC address: %s", req.GuestMac))
		}
		mac = hw.String()
	}
	if id != *req.IfaceID {
		return 0, nil, errIDMismatch
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	// An update replaces the old interface: release its tap first.
	pos := -1
	for i, n := range v.cfg.nets {
		if n.id == id {
			pos = i
			n.tap.Close()
		}
	}
	for _, n := range v.cfg.nets {
		if n.id != id && mac != "" && n.macGiven && n.mac == mac {
			v.dropNet(pos)
			return 0, nil, badRequest("Network config error: The MAC address is already in use: %s", mac)
		}
		if n.id != id && n.hostDev == *req.HostDevName {
			v.dropNet(pos)
			return 0, nil, badRequest("Network config error: The host device name is already in use: %s", n.hostDev)
		}
	}
	tap, err := openTap(*req.HostDevName)
	if err != nil {
		v.dropNet(pos)
		return 0, nil, badRequest("Network config error: Could not create the network device: %s", err.Error())
	}
	n := &netCfg{id: id, hostDev: *req.HostDevName, mac: mac, macGiven: mac != "", rx: req.RxRateLimiter, tx: req.TxRateLimiter, tap: tap}
	if !n.macGiven {
		n.mac = randomMAC()
	}
	if pos >= 0 {
		v.cfg.nets[pos] = n
	} else {
		v.cfg.nets = append(v.cfg.nets, n)
	}
	return 0, nil, nil
}

// dropNet forgets the interface at pos (whose tap is already closed) after a
// failed update, as Firecracker does.
func (v *vmm) dropNet(pos int) {
	if pos >= 0 {
		v.cfg.nets = append(v.cfg.nets[:pos], v.cfg.nets[pos+1:]...)
	}
}

// randomMAC stands in for Firecracker not advertising a MAC at all (the guest
// driver then picks a random one): a random locally administered unicast
// address.
func randomMAC() string {
	var b [6]byte
	rand.Read(b[:])
	b[0] = b[0]&^1 | 2
	return net.HardwareAddr(b[:]).String()
}

// patchNetwork is PATCH /network-interfaces/{iface_id} after boot: rate
// limiters only.
func (v *vmm) patchNetwork(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req models.PartialNetworkInterface
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if id != *req.IfaceID {
		return 0, nil, errIDMismatch
	}
	if !v.started {
		return 0, nil, errPreBoot
	}
	for _, n := range v.cfg.nets {
		if n.id == id {
			n.rx, n.tx = req.RxRateLimiter, req.TxRateLimiter // accepted; not enforced
			return 0, nil, nil
		}
	}
	return 0, nil, badRequest("Network config error: Invalid interface ID - not found.")
}
