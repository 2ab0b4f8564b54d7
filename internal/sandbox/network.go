package sandbox

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/netpod"
)

// GuestShmDir is the pod's shared /dev/shm in the guest: a tmpfs the agent
// mounts when the sandbox is created, bound into each container of the pod
// that shares the pod's IPC namespace.
const GuestShmDir = "/run/hull/shm"

// defaultShmSize is the guest /dev/shm's size when the config sets none:
// containerd's and Docker's default.
const defaultShmSize = 64 << 20

// attachNetwork mirrors the pod's network namespace into the VM: a tap with
// tc redirects per interface, given to the VM as virtio-net devices.
func (s *Sandbox) attachNetwork(ctx context.Context, nsPath string, own bool, undo *cleanups) error {
	var opts []netpod.Option
	if own {
		opts = append(opts, netpod.OwnNamespace())
	}
	n, err := netpod.Attach(ctx, nsPath, opts...)
	if err != nil {
		return err
	}
	s.network, s.netnsPath = n, nsPath
	undo.push(n.Close)
	// Recorded at once: a runtime that dies before the VM runs must
	// still have its taps and filters removed by Cleanup. A VM that
	// already runs stays in the record.
	r := record{ID: s.id, NetNS: nsPath}
	if s.vm != nil {
		r = s.record()
	}
	return writeRecord(s.stateDir, r)
}

// hotplugNetwork mirrors the pod's network namespace into a VM that booted
// without it: the taps are made as for attachNetwork, then each is
// hot-added as a NIC into the slots the VM reserved (VM.HotplugNICs).
func (s *Sandbox) hotplugNetwork(ctx context.Context, nsPath string, slots uint32, undo *cleanups) error {
	adder, err := hypervisor.AsNetworkAdder(s.vm)
	if err != nil {
		return err
	}
	if err := s.attachNetwork(ctx, nsPath, false, undo); err != nil {
		return err
	}
	devs := s.network.Devices()
	if uint32(len(devs)) > slots {
		return fmt.Errorf("the pod network has %d interfaces and the vm room for %d hot-added NICs: %w",
			len(devs), slots, errdefs.ErrResourceExhausted)
	}
	for _, d := range devs {
		if err := adder.AddNetwork(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// configureGuestNetwork has the agent give the guest the pod's interfaces,
// routes, neighbours and DNS.
func (s *Sandbox) configureGuestNetwork(ctx context.Context, dns *agent.DNS) error {
	if s.network == nil {
		return nil
	}
	req := s.network.Request()
	if len(req.GetInterfaces()) == 0 && dns == nil {
		return nil
	}
	req.Dns = dns
	if _, err := s.client.Network().ConfigureNetwork(ctx, req); err != nil {
		return fmt.Errorf("configuring the guest network: %w", s.guestError(err))
	}
	return nil
}
