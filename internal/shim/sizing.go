package shim

import (
	"fmt"
	"runtime"
	"strconv"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
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
// The result is capped at limit (zero fields: the host's CPUs and memory).
// Malformed annotations are an error; absent or zero ones add nothing (a
// pod without limits gets the base size).
func podSize(base, limit vmSize, annotations map[string]string) (vmSize, error) {
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
		return vmSize{}, err
	}
	quota, err := num(annotationSandboxCPUQuota)
	if err != nil {
		return vmSize{}, err
	}
	mem, err := num(annotationSandboxMemory)
	if err != nil {
		return vmSize{}, err
	}
	if period < 0 || mem < 0 || quota < -1 {
		return vmSize{}, fmt.Errorf("sizing annotations: negative period %d, quota %d or memory %d: %w", period, quota, mem, errdefs.ErrInvalidArgument)
	}
	size := base
	if quota > 0 && period > 0 {
		size.vcpus += uint32(min((quota+period-1)/period, 255))
	}
	if mem > 0 {
		size.memoryMiB += uint32(min((mem+(1<<20)-1)>>20, 1<<31))
	}
	if limit.vcpus == 0 {
		limit.vcpus = uint32(min(runtime.NumCPU(), 255))
	}
	if limit.memoryMiB == 0 {
		limit.memoryMiB = hostMemoryMiB()
	}
	size.vcpus = max(base.vcpus, min(size.vcpus, limit.vcpus))
	size.memoryMiB = max(base.memoryMiB, min(size.memoryMiB, limit.memoryMiB))
	return size, nil
}

// hostMemoryMiB is the host's RAM, or no cap when it cannot be read.
func hostMemoryMiB() uint32 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 1 << 31
	}
	return uint32(min(uint64(si.Totalram)*uint64(si.Unit)>>20, 1<<31))
}
