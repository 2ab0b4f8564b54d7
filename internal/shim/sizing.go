package shim

import (
	"fmt"
	"strconv"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The sizing annotations containerd's CRI (1.6 and later) puts on a pod
// sandbox: the sum of the pod's container limits as the kubelet passes them
// in the PodSandboxConfig.
const (
	annotationSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
	annotationSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	annotationSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
)

// vmSize is a VM's vCPUs and memory.
type vmSize struct {
	vcpus     uint32
	memoryMiB uint32
}

// podSize grows the base VM size by the pod's limits from the sizing
// annotations: ceil(quota/period) vCPUs and the memory limit, on top of
// the base that holds the guest kernel, the agent and the pause container.
// A size beyond limit (hypervisor.max_vcpus, max_memory_mib) is refused
// with an ErrInvalidArgument-class error. static reports whether the
// annotations sized the pod (then its containers need no hotplug).
// Malformed annotations are an error; absent or zero ones add nothing (a
// pod without limits gets the base size).
func podSize(base, limit vmSize, annotations map[string]string) (size vmSize, static bool, err error) {
	num := func(key string) (int64, error) {
		v, ok := annotations[key]
		if !ok || v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("annotation %s=%q: not an integer: %w", key, v, errdefs.ErrInvalidArgument)
		}
		return n, nil
	}
	period, err := num(annotationSandboxCPUPeriod)
	if err != nil {
		return vmSize{}, false, err
	}
	quota, err := num(annotationSandboxCPUQuota)
	if err != nil {
		return vmSize{}, false, err
	}
	mem, err := num(annotationSandboxMemory)
	if err != nil {
		return vmSize{}, false, err
	}
	if period < 0 || mem < 0 || quota < -1 {
		return vmSize{}, false, fmt.Errorf("sizing annotations: negative period %d, quota %d or memory %d: %w", period, quota, mem, errdefs.ErrInvalidArgument)
	}
	grow := vmSize{vcpus: cpusOf(quota, period), memoryMiB: mibOf(mem)}
	size, err = fitSize(base, grow, limit)
	if err != nil {
		return vmSize{}, false, fmt.Errorf("pod limits (sizing annotations): %w", err)
	}
	return size, grow != (vmSize{}), nil
}

// containerGrowth is what a pod member's own limits add to its VM when the
// pod was not sized by annotations.
func containerGrowth(spec *specs.Spec) vmSize {
	if spec.Linux == nil || spec.Linux.Resources == nil {
		return vmSize{}
	}
	var g vmSize
	r := spec.Linux.Resources
	if c := r.CPU; c != nil && c.Quota != nil && c.Period != nil {
		g.vcpus = cpusOf(*c.Quota, int64(min(*c.Period, 1<<62)))
	}
	if m := r.Memory; m != nil && m.Limit != nil {
		g.memoryMiB = mibOf(*m.Limit)
	}
	return g
}

// fitSize is base grown by grow, or an ErrInvalidArgument-class error
// when that is beyond limit in vCPUs or memory.
func fitSize(base, grow, limit vmSize) (vmSize, error) {
	want := vmSize{
		vcpus:     uint32(min(uint64(base.vcpus)+uint64(grow.vcpus), 1<<32-1)),
		memoryMiB: uint32(min(uint64(base.memoryMiB)+uint64(grow.memoryMiB), 1<<32-1)),
	}
	if want.vcpus > max(limit.vcpus, base.vcpus) {
		return vmSize{}, fmt.Errorf("a VM of %d vCPUs (%d for the pod's CPU limits on a base of %d) is beyond the cap of %d (hypervisor.max_vcpus, at most the host's CPUs): %w",
			want.vcpus, grow.vcpus, base.vcpus, limit.vcpus, errdefs.ErrInvalidArgument)
	}
	if want.memoryMiB > max(limit.memoryMiB, base.memoryMiB) {
		return vmSize{}, fmt.Errorf("a VM of %d MiB (%d MiB for the pod's memory limits on a base of %d MiB) is beyond the cap of %d MiB (hypervisor.max_memory_mib, by default 3/4 of the host's memory): %w",
			want.memoryMiB, grow.memoryMiB, base.memoryMiB, limit.memoryMiB, errdefs.ErrInvalidArgument)
	}
	return want, nil
}

// cpusOf is ceil(quota/period), zero without a quota.
func cpusOf(quota, period int64) uint32 {
	if quota <= 0 || period <= 0 {
		return 0
	}
	quota = min(quota, 1<<40) // no overflow below; far beyond 255 CPUs
	return uint32(min((quota+period-1)/period, 255))
}

// memoryBlockMiB is the unit in which a VM's memory grows (the guest's
// memory block size): the limit a VM can reach is its boot memory plus
// whole blocks.
const memoryBlockMiB = 128

// alignLimit lowers limit's memory to what growth in whole memory blocks
// from base can reach, so that a growth capped at it is not refused.
func alignLimit(base, limit vmSize) vmSize {
	if limit.memoryMiB > base.memoryMiB {
		limit.memoryMiB = base.memoryMiB + (limit.memoryMiB-base.memoryMiB)/memoryBlockMiB*memoryBlockMiB
	}
	return limit
}

// mibOf is bytes in MiB, rounded up; zero for none.
func mibOf(bytes int64) uint32 {
	if bytes <= 0 {
		return 0
	}
	return uint32(min((bytes+(1<<20)-1)>>20, 1<<31))
}

// growthTarget is the size a VM of boot size base, now at cur, grows to for
// the live members' growth: base plus their sum, never below cur (VMs do
// not shrink). A sum beyond limit is an ErrInvalidArgument-class error.
func growthTarget(base, cur, limit vmSize, grown map[string]vmSize) (vmSize, error) {
	var sum vmSize
	for _, g := range grown {
		sum.vcpus = uint32(min(uint64(sum.vcpus)+uint64(g.vcpus), 1<<32-1))
		sum.memoryMiB = uint32(min(uint64(sum.memoryMiB)+uint64(g.memoryMiB), 1<<32-1))
	}
	want, err := fitSize(base, sum, limit)
	if err != nil {
		return vmSize{}, err
	}
	return vmSize{max(want.vcpus, cur.vcpus), max(want.memoryMiB, cur.memoryMiB)}, nil
}

// warmFit says whether a warm VM of the factory can serve a pod, before
// one is claimed: a warm VM boots at base (the configuration's default
// size) and the adoption grows it by hotplug to the pod's size (podSize
// of its sizing annotations), which reaches at most limit's vCPUs and
// limit's memory in whole memory blocks above base (alignLimit). It is nil
// when the pod's size is within that, else says why not; the pod then
// claims nothing and starts cold, the warm VM left for another pod (a size
// beyond limit fails the create cold too, without a warm VM spent on it).
func warmFit(base, limit vmSize, annotations map[string]string) error {
	size, _, err := podSize(base, limit, annotations)
	if err != nil {
		return err
	}
	reach := alignLimit(base, limit)
	if size.memoryMiB > max(reach.memoryMiB, base.memoryMiB) {
		return fmt.Errorf("the pod's %d MiB is beyond the %d MiB a warm vm of %d MiB grows to in %d MiB blocks: %w",
			size.memoryMiB, reach.memoryMiB, base.memoryMiB, memoryBlockMiB, errdefs.ErrFailedPrecondition)
	}
	return nil
}
