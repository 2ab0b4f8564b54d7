package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// resizeSlackMiB is how far a grown VM's memory may exceed the size asked
// for: less than one memory block of the driver (128 MiB for QEMU).
const resizeSlackMiB = 128

// Resize grows the sandbox's VM to at least vcpus vCPUs and memoryMiB MiB of
// memory: the sandbox's cgroup limits are raised first (so that the added
// memory is never beyond them), the driver hot-adds the resources, then
// the agent brings them online in the guest; the memory limit then settles
// to the size the VM reached. It never shrinks the VM. A driver or machine that cannot
// hotplug answers ErrNotImplemented, a size beyond the VM's limits
// (hypervisor.Config's MaxVCPUs and MaxMemoryMiB) ErrInvalidArgument. When
// the agent call fails after the driver grew the VM, a later Resize (even to
// the same size) has the agent online what is still offline.
func (s *Sandbox) Resize(ctx context.Context, vcpus, memoryMiB uint32) error {
	if st := s.State(); st != StateRunning {
		return fmt.Errorf("resizing sandbox %s: sandbox is %s: %w", s.id, st, errdefs.ErrFailedPrecondition)
	}
	r, err := hypervisor.AsResizer(s.vm)
	if err != nil {
		return fmt.Errorf("resizing sandbox %s: %w", s.id, err)
	}
	s.resizeMu.Lock()
	defer s.resizeMu.Unlock()
	start := time.Now()
	if s.cgroup != nil {
		// Memory grows in the driver's blocks: allow the last one whole.
		if err := s.cgroup.grow(vcpus, memoryMiB+resizeSlackMiB); err != nil {
			return fmt.Errorf("resizing sandbox %s: raising its cgroup limits: %w", s.id, err)
		}
	}
	size, grewErr := r.Resize(ctx, vcpus, memoryMiB)
	if grewErr != nil {
		grewErr = fmt.Errorf("resizing sandbox %s: %w", s.id, grewErr)
		if size.VCPUs == 0 {
			return grewErr
		}
		// Part of the growth happened (vCPUs before a refused DIMM):
		// have the guest use what was added all the same.
	} else if s.cgroup != nil {
		// The VM has its size now: the block's slack goes, so that a
		// grown VM is charged as one booted at that size.
		if err := s.cgroup.settle(size.MemoryMiB); err != nil {
			log.G(ctx).WithError(err).WithField("sandbox", s.id).Warn("lowering the sandbox's cgroup memory limit to the grown vm's size; it keeps the higher limit")
		}
	}
	resp, err := s.client.System().OnlineResources(ctx, &agent.OnlineResourcesRequest{
		Vcpus:     size.VCPUs,
		MemoryMib: size.MemoryMiB,
	})
	if err != nil {
		return errors.Join(grewErr, fmt.Errorf("resizing sandbox %s to %d vCPUs and %d MiB: %w", s.id, size.VCPUs, size.MemoryMiB, s.guestError(err)))
	}
	if grewErr != nil {
		return grewErr
	}
	log.G(ctx).WithFields(log.Fields{
		"sandbox":          s.id,
		"vcpus":            size.VCPUs,
		"memory_mib":       size.MemoryMiB,
		"guest_vcpus":      resp.GetOnlineVcpus(),
		"guest_memory_mib": resp.GetMemoryMib(),
		"took":             time.Since(start),
	}).Info("sandbox resized")
	return nil
}
