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
// tc redirects per interface, given to the VM as virtio-net devices. With
// inRecord, nsPath goes into the crash-cleanup record.
func (s *Sandbox) attachNetwork(ctx context.Context, nsPath string, own, inRecord bool, undo *cleanups) error {
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
	if !inRecord {
		return nil
	}
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
func (s *Sandbox) hotplugNetwork(ctx context.Context, nsPath string, slots uint32, inRecord bool, undo *cleanups) error {
	if _, err := hypervisor.AsNetworkAdder(s.vm); err != nil {
		return err
	}
	if err := s.attachNetwork(ctx, nsPath, false, inRecord, undo); err != nil {
		return err
	}
	return s.addNICs(ctx, slots)
}

// addNICs hot-adds the attached pod network's devices into the VM's
// reserved NIC slots, of which it has slots. A failure leaves the NICs
// added so far in the VM, whose stop releases them with the taps.
func (s *Sandbox) addNICs(ctx context.Context, slots uint32) error {
	adder, err := hypervisor.AsNetworkAdder(s.vm)
	if err != nil {
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

// AttachOwnNetwork mirrors the VMM's own network namespace
// (hypervisor.Config.OwnNetNS) into the running VM, once something filled
// it: a createRuntime hook that set up the container's network there, as
// nerdctl's CNI hook does by the VMM's PID. Each interface is hot-added as a
// NIC into the VM.HotplugNICs slots reserved at boot, then the guest gets
// the addresses, routes and dns. The namespace is the VMM's, and its taps
// and filters die with it, so nothing of it goes into the crash-cleanup
// record. It is called once, before any container is created; a namespace
// with only lo adds nothing. On error nothing it made is left.
func (s *Sandbox) AttachOwnNetwork(ctx context.Context, dns *agent.DNS) (retErr error) {
	if !s.ownNetNS {
		return fmt.Errorf("sandbox %s: the vmm has no network namespace of its own: %w", s.id, errdefs.ErrFailedPrecondition)
	}
	if s.network != nil {
		return fmt.Errorf("sandbox %s: network already attached: %w", s.id, errdefs.ErrAlreadyExists)
	}
	pid := s.vm.Describe().PID
	if pid <= 0 || !s.vmAlive() {
		return fmt.Errorf("sandbox %s: the vmm does not run: %w", s.id, errdefs.ErrFailedPrecondition)
	}
	var undo cleanups
	defer func() {
		if retErr != nil {
			_ = undo.run(context.WithoutCancel(ctx))
			s.network, s.netnsPath = nil, ""
		}
	}()
	// The VMM is the sandbox's child: its PID names it until it is
	// reaped, which closes Done; a VMM that died meanwhile may have given
	// its PID away, and what was opened by it is dropped.
	if err := s.hotplugNetwork(ctx, fmt.Sprintf("/proc/%d/ns/net", pid), s.hotplugNICs, false, &undo); err != nil {
		return err
	}
	if !s.vmAlive() {
		return fmt.Errorf("sandbox %s: the vmm exited while its network was mirrored: %w", s.id, errdefs.ErrFailedPrecondition)
	}
	return s.configureGuestNetwork(ctx, dns)
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
