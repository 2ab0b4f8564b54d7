package qemu

import (
	"strings"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// vhostVsockOption is how QEMU names the vsock device in an error it met
// setting it up: "-device vhost-vsock-pci,id=vsock,guest-cid=N: <reason>"
// (vhost-vsock-device on microvm).
const vhostVsockOption = "-device vhost-vsock"

// cidInUse is the reason QEMU gives when the kernel refuses the guest CID
// (VHOST_VSOCK_SET_GUEST_CID fails with EADDRINUSE).
const cidInUse = "unable to set guest cid: Address already in use"

// vsockFailure classifies the output of a QEMU that exited while starting:
// hypervisor.ErrCIDInUse when the vsock device could not take its guest
// CID, hypervisor.ErrVsockUnavailable when the device failed otherwise (no
// vhost-vsock, no access to it), nil when the vsock device is not what
// failed. QEMU reports device errors only as text on its standard error;
// this is the one place they become error classes.
func vsockFailure(output string) error {
	for line := range strings.Lines(output) {
		if !strings.Contains(line, vhostVsockOption) {
			continue
		}
		if strings.Contains(line, cidInUse) {
			return hypervisor.ErrCIDInUse
		}
		return hypervisor.ErrVsockUnavailable
	}
	return nil
}
