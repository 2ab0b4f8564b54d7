package cri

import (
	"strconv"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The limits the sizing case asks for: 256 MiB and one CPU (quota equal to
// the period). The VMs start at the default 512 MiB and one vCPU, so either
// way the VM must reach 768 MiB and two vCPUs.
const (
	sizingMemory    = 256 << 20
	sizingCPUPeriod = 100000
)

// podSizing checks both ways a pod's VM gets its size: from the pod's
// resources (containerd's sandbox sizing annotations, applied at boot) and,
// for a pod without them, by hotplug when a container with limits arrives.
func podSizing(t *testing.T, s *session) {
	limits := &runtime.LinuxContainerResources{MemoryLimitInBytes: sizingMemory, CpuPeriod: sizingCPUPeriod, CpuQuota: sizingCPUPeriod}

	// Sized at boot by the pod's resources.
	config := s.podConfig("sized")
	config.Linux.Resources = limits
	p := s.runPodWith(config)
	id := p.run(containerConfig("probe", untilTerm("true")...))
	checkGuestSize(t, p, id)
	p.stop()
	p.remove()

	// Grown by hotplug for a container with limits.
	p = s.runPod("grown")
	before := p.run(containerConfig("small", untilTerm("true")...))
	if kib := guestMemKiB(t, p, before); kib > 512<<10 {
		t.Errorf("a pod without resources has MemTotal %d KiB, want that of the base 512 MiB", kib)
	}
	c := containerConfig("limited", untilTerm("true")...)
	c.Linux.Resources = limits
	id = p.run(c)
	checkGuestSize(t, p, id)
	// The container sees its own cgroup at /sys/fs/cgroup (the mount CRI
	// adds), with its limits, as runc shows it on a cgroup-v2 host.
	r := p.execSync(id, 30, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max")
	if want := "268435456\n100000 100000\n"; r.ExitCode != 0 || string(r.Stdout) != want {
		t.Errorf("the container's cgroup limits: exit %d, %q %q, want %q", r.ExitCode, r.Stdout, r.Stderr, want)
	}
	p.stop()
	p.remove()
}

// checkGuestSize expects the guest, seen from container id, to have grown
// to 768 MiB and two vCPUs.
func checkGuestSize(t *testing.T, p *pod, id string) {
	t.Helper()
	if n := guestCPUs(t, p, id); n != 2 {
		t.Errorf("guest has %d vCPUs online, want 2", n)
	}
	// MemTotal is RAM less what the kernel keeps: 512 MiB shows ~469 MiB,
	// 768 MiB ~725 MiB.
	if kib := guestMemKiB(t, p, id); kib < 650<<10 || kib > 768<<10 {
		t.Errorf("guest MemTotal %d KiB, want that of a 768 MiB VM", kib)
	}
}

func guestCPUs(t *testing.T, p *pod, id string) int {
	t.Helper()
	r := p.execSync(id, 30, "nproc")
	n, err := strconv.Atoi(strings.TrimSpace(string(r.Stdout)))
	if r.ExitCode != 0 || err != nil {
		t.Fatalf("nproc in %s: exit %d, %q %q", id, r.ExitCode, r.Stdout, r.Stderr)
	}
	return n
}

func guestMemKiB(t *testing.T, p *pod, id string) int {
	t.Helper()
	r := p.execSync(id, 30, "sh", "-c", "grep MemTotal /proc/meminfo")
	f := strings.Fields(string(r.Stdout))
	if r.ExitCode != 0 || len(f) < 2 {
		t.Fatalf("meminfo in %s: exit %d, %q %q", id, r.ExitCode, r.Stdout, r.Stderr)
	}
	kib, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("meminfo in %s: %q", id, r.Stdout)
	}
	return kib
}
