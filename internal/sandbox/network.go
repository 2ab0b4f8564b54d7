package sandbox

import (
	"context"
	"fmt"

	agent "github.com/hull-runtime/hull/api/agent/v1"
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
	// still have its taps and filters removed by Cleanup.
	return writeRecord(s.stateDir, record{ID: s.id, NetNS: nsPath})
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
