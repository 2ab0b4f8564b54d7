package qemu

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// VhostNetDevice is the host device of vhost-net, the kernel's virtio-net
// back end: with it the host kernel moves a NIC's packets between the tap
// and guest memory, without a trip through QEMU for each one.
const VhostNetDevice = "/dev/vhost-net"

// vhostNetPath is the device Start opens; a variable for tests.
var vhostNetPath = VhostNetDevice

// OpenVhostNet tells whether this process can open /dev/vhost-net and it
// answers as vhost-net: the test Start makes before it gives a VM's NICs
// vhost-net. nil means Start uses it.
func OpenVhostNet() error {
	fs, err := openVhostNet(1)
	closeFiles(fs)
	return err
}

// vhostGetFeatures is VHOST_GET_FEATURES, _IOR(VHOST_VIRTIO, 0x00, __u64)
// of <linux/vhost.h>: it needs no owner, so asking it leaves the instance
// for QEMU to claim (VHOST_SET_OWNER binds it to the caller).
const vhostGetFeatures = 0x8008af00

// openVhostNet opens the vhost-net device n times, once per NIC queue
// (each queue needs a vhost-net instance of its own), and checks that each
// descriptor answers as vhost-net: QEMU 7.2 aborts (an assertion in
// net_client_init1) when a vhostfds= descriptor is not one. On error it
// leaves none open.
func openVhostNet(n int) ([]*os.File, error) {
	fs := make([]*os.File, 0, n)
	for range n {
		fd, err := unix.Open(vhostNetPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			closeFiles(fs)
			return nil, &os.PathError{Op: "open", Path: vhostNetPath, Err: err}
		}
		f := os.NewFile(uintptr(fd), vhostNetPath)
		fs = append(fs, f)
		// The answer is a __u64, an int on the 64-bit hosts hull runs on.
		if _, err := unix.IoctlGetInt(fd, vhostGetFeatures); err != nil {
			closeFiles(fs)
			return nil, fmt.Errorf("%s is not vhost-net: VHOST_GET_FEATURES: %w", vhostNetPath, err)
		}
	}
	return fs, nil
}

// netQueues is how many queues the VM's NICs have: one per tap
// descriptor, one for a tap opened by name.
func netQueues(cfg *hypervisor.Config) int {
	n := 0
	for _, nd := range cfg.Networks {
		n += max(len(nd.FDs), 1)
	}
	return n
}

// vhostNetFiles opens a vhost-net descriptor for each NIC queue of cfg:
// none when the VM has no NIC, and none, with the reason, when the device
// does not open (no vhost_net module, a container without the device):
// vhost-net is used when the device opens and never otherwise, and QEMU
// is then not asked for it at all (vhost=on makes QEMU fail when it cannot
// have it).
func vhostNetFiles(cfg *hypervisor.Config) ([]*os.File, error) {
	n := netQueues(cfg)
	if n == 0 {
		return nil, nil
	}
	return openVhostNet(n)
}
