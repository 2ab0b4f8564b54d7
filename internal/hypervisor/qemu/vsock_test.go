package qemu

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestVsockFailure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		output string
		want   error
	}{
		{
			name:   "cid in use",
			output: "qemu-system-x86_64: -device vhost-vsock-pci,id=vsock,guest-cid=1234: vhost-vsock: unable to set guest cid: Address already in use\n",
			want:   hypervisor.ErrCIDInUse,
		},
		{
			name:   "cid in use on microvm",
			output: "qemu-system-x86_64: -device vhost-vsock-device,id=vsock,guest-cid=77: vhost-vsock: unable to set guest cid: Address already in use",
			want:   hypervisor.ErrCIDInUse,
		},
		{
			name:   "no device",
			output: "qemu-system-x86_64: -device vhost-vsock-pci,id=vsock,guest-cid=9: vhost-vsock: failed to open vhost device: No such file or directory\n",
			want:   hypervisor.ErrVsockUnavailable,
		},
		{
			name:   "no access",
			output: "some warning\nqemu-system-x86_64: -device vhost-vsock-pci,id=vsock,guest-cid=9: vhost-vsock: failed to open vhost device: Permission denied\n",
			want:   hypervisor.ErrVsockUnavailable,
		},
		{
			name:   "another device failed",
			output: "qemu-system-x86_64: -device virtio-net-pci,netdev=n0: Address already in use\n",
		},
		{
			name:   "no output",
			output: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := vsockFailure(tc.output)
			if tc.want == nil {
				if got != nil {
					t.Fatalf("vsockFailure = %v, want nil", got)
				}
				return
			}
			if !errors.Is(got, tc.want) {
				t.Fatalf("vsockFailure = %v, want %v", got, tc.want)
			}
			// One class only: a CID collision is not a device without
			// vsock (which would fall back), nor the reverse.
			for _, other := range []error{hypervisor.ErrCIDInUse, hypervisor.ErrVsockUnavailable} {
				if !errors.Is(tc.want, other) && errors.Is(got, other) {
					t.Errorf("vsockFailure = %v, also %v", got, other)
				}
			}
		})
	}
}

// TestNewRefusesVsockUnix: the unix stand-in for vsock never reaches QEMU.
func TestNewRefusesVsockUnix(t *testing.T) {
	c := baseConfig()
	c.Agent = hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 3, Port: 1024, VsockUnixDir: "/tmp/x"}
	_, err := New(c, Options{Accel: AccelTCG, TSCKHz: 1})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "outside a VM") {
		t.Fatalf("New = %v, want an invalid-argument error", err)
	}
}
