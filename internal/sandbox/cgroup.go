package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hostcgroup"
)

// cpuPeriodUs is the CFS period of the sandbox cgroup's CPU quota.
const cpuPeriodUs = 100000

// CgroupConfig says where the sandbox's host processes (the VMM and
// virtiofsd, with all their threads and children) are accounted, and how
// far they may go.
type CgroupConfig struct {
	// Path is the cgroup (from hostcgroup.Resolve) the sandbox creates, or
	// uses when it exists, before anything runs. Empty: the sandbox makes
	// none and the VM driver places the VMM in a cgroup of its own,
	// without limits.
	Path string
	// Unit is the systemd scope that the systemd form of the cgroupsPath
	// names (hostcgroup.SystemdUnit); zero for the cgroupfs form. On a
	// cgroup v2 host where systemd runs, systemd makes the group as that
	// scope, delegated; elsewhere the sandbox makes Path itself.
	Unit hostcgroup.Unit
	// MemoryOverheadMiB is what the group may use beyond the VM's memory:
	// the VMM's own memory (device models, TCG's translation cache) and
	// virtiofsd.
	MemoryOverheadMiB uint32
	// CPUOverheadMilli is what the group's CPU quota adds to the VM's
	// vCPUs, in thousandths of a CPU (I/O threads, virtiofsd).
	CPUOverheadMilli uint32
}

// hostCgroup is the sandbox's host cgroup with the size its limits follow.
type hostCgroup struct {
	cfg CgroupConfig
	g   *hostcgroup.Group

	mu sync.Mutex
	// vcpus and memoryMiB are the VM size the limits were last set for;
	// guarded by mu.
	vcpus, memoryMiB uint32
}

// hostFS finds the host's cgroup mounts; a variable for tests.
var hostFS = hostcgroup.Host

// systemdRunning tells whether systemd is the host's init (then it makes
// the systemd form's scope); a variable for tests.
var systemdRunning = hostcgroup.SystemdRunning

// createCgroup makes the sandbox's cgroup with limits for a VM of vcpus
// and memoryMiB, before any of its processes runs.
func (s *Sandbox) createCgroup(ctx context.Context, cfg CgroupConfig, vcpus, memoryMiB uint32, undo *cleanups) error {
	if cfg.Path == "" {
		return nil
	}
	hc, err := newHostCgroup(cfg, vcpus, memoryMiB)
	if err != nil {
		return err
	}
	undo.push(func(context.Context) error { return hc.g.Delete() })
	s.cgroup = hc
	log.G(ctx).WithFields(log.Fields{
		"sandbox": s.id, "cgroup": cfg.Path, "created": hc.g.Created(), "systemd_unit": hc.g.Unit().Name,
		"memory_limit_mib": memoryMiB + cfg.MemoryOverheadMiB,
	}).Debug("sandbox cgroup ready")
	return nil
}

// newHostCgroup makes (or finds) the cgroup cfg names, with limits for a
// VM of vcpus and memoryMiB; on error what it made is removed.
func newHostCgroup(cfg CgroupConfig, vcpus, memoryMiB uint32) (*hostCgroup, error) {
	fs, err := hostFS()
	if err != nil {
		return nil, err
	}
	var g *hostcgroup.Group
	if cfg.Unit.Name != "" && fs.Unified != "" && systemdRunning() {
		g, err = hostcgroup.CreateUnit(fs, cfg.Path, cfg.Unit)
	} else {
		g, err = hostcgroup.Create(fs, cfg.Path)
	}
	if err != nil {
		return nil, err
	}
	hc := &hostCgroup{cfg: cfg, g: g}
	if err := hc.setLimits(vcpus, memoryMiB); err != nil {
		return nil, errors.Join(err, g.Delete())
	}
	return hc, nil
}

// setLimits sets the group's limits for a VM of vcpus and memoryMiB:
// memory plus the memory overhead, and a CPU quota of the vCPUs plus the
// CPU overhead.
func (hc *hostCgroup) setLimits(vcpus, memoryMiB uint32) error {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if err := hc.g.SetLimits(limitsFor(hc.cfg, vcpus, memoryMiB)); err != nil {
		return err
	}
	hc.vcpus, hc.memoryMiB = vcpus, memoryMiB
	return nil
}

// grow raises the limits to a VM of at least vcpus and memoryMiB; it never
// lowers them.
func (hc *hostCgroup) grow(vcpus, memoryMiB uint32) error {
	hc.mu.Lock()
	v, m := max(vcpus, hc.vcpus), max(memoryMiB, hc.memoryMiB)
	same := v == hc.vcpus && m == hc.memoryMiB
	hc.mu.Unlock()
	if same {
		return nil
	}
	return hc.setLimits(v, m)
}

// settle lowers the memory limit, which grow raised with a memory block's
// slack, to that of a VM of exactly memoryMiB, the size the VM reached; it
// never raises it.
func (hc *hostCgroup) settle(memoryMiB uint32) error {
	hc.mu.Lock()
	v, m := hc.vcpus, hc.memoryMiB
	hc.mu.Unlock()
	if m <= memoryMiB {
		return nil
	}
	return hc.setLimits(v, memoryMiB)
}

// limitsFor is the cgroup limits of a VM of vcpus and memoryMiB.
func limitsFor(cfg CgroupConfig, vcpus, memoryMiB uint32) hostcgroup.Limits {
	return hostcgroup.Limits{
		MemoryBytes: int64(memoryMiB+cfg.MemoryOverheadMiB) << 20,
		CPUQuotaUs:  (int64(vcpus)*1000 + int64(cfg.CPUOverheadMilli)) * cpuPeriodUs / 1000,
		CPUPeriodUs: cpuPeriodUs,
	}
}

// childCgroup is the cgroup the sandbox's host processes start in; nil
// without one of its own.
func (s *Sandbox) childCgroup() child.Cgroup {
	if s.cgroup == nil {
		return nil
	}
	return s.cgroup.g
}

// HostUsage reads what the sandbox's host processes use: the VMM and
// virtiofsd, from the sandbox's cgroup. A sandbox without its own cgroup
// answers ErrNotImplemented-class.
func (s *Sandbox) HostUsage() (hostcgroup.Usage, error) {
	if s.cgroup == nil {
		return hostcgroup.Usage{}, fmt.Errorf("sandbox %s has no cgroup of its own: %w", s.id, errdefs.ErrNotImplemented)
	}
	return s.cgroup.g.Usage()
}

// CgroupPath is the cgroup of the sandbox's host processes; "" when the
// sandbox has none of its own.
func (s *Sandbox) CgroupPath() string {
	if s.cgroup == nil {
		return ""
	}
	return s.cgroup.g.Path()
}

// HostProcesses names the sandbox's host processes by role: "vmm" (the
// hypervisor) and "virtiofsd", each by its PID and start time as recorded
// when it started.
func (s *Sandbox) HostProcesses() map[string]child.Process {
	r := s.record()
	m := map[string]child.Process{}
	if r.VMPID > 0 {
		m["vmm"] = child.Process{PID: r.VMPID, StartTime: r.VMStartTime}
	}
	if r.VirtiofsPID > 0 {
		m["virtiofsd"] = child.Process{PID: r.VirtiofsPID, StartTime: r.VirtiofsStartTime}
	}
	return m
}

// StateDir returns the sandbox's state directory.
func (s *Sandbox) StateDir() string { return s.stateDir }

// cgroupOOMCause says, for an error about a VM that died, that the
// sandbox's host cgroup reached its memory limit and killed a process (the
// VMM or virtiofsd); "" when it did not, or without a cgroup of its own.
func (s *Sandbox) cgroupOOMCause() string {
	if s.cgroup == nil {
		return ""
	}
	u, err := s.cgroup.g.Usage()
	if err != nil || u.OOMKills == 0 {
		return ""
	}
	return fmt.Sprintf("the sandbox's host cgroup %s reached its memory limit (%d MiB: the VM's memory plus runtime.cgroup_memory_overhead_mib) and the kernel killed %d of its processes",
		s.cgroup.g.Path(), u.MemoryLimitBytes>>20, u.OOMKills)
}
