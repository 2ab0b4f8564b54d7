package shim

import (
	"github.com/containerd/cgroups/v3/cgroup2/stats"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hostcgroup"
)

// metrics turns the guest's cgroup statistics into containerd's cgroup v2
// metrics type (io.containerd.cgroups.v2.Metrics), which `ctr task metrics`
// and CRI decode.
func metrics(s *agent.StatsResponse) *stats.Metrics {
	m := &stats.Metrics{}
	if c := s.GetCpu(); c != nil {
		m.CPU = &stats.CPUStat{
			UsageUsec:     c.GetUsageUsec(),
			UserUsec:      c.GetUserUsec(),
			SystemUsec:    c.GetSystemUsec(),
			NrPeriods:     c.GetNrPeriods(),
			NrThrottled:   c.GetNrThrottled(),
			ThrottledUsec: c.GetThrottledUsec(),
		}
	}
	if mem := s.GetMemory(); mem != nil {
		m.Memory = &stats.MemoryStat{
			Usage:       mem.GetUsage(),
			UsageLimit:  mem.GetLimit(),
			Anon:        mem.GetAnon(),
			File:        mem.GetFile(),
			KernelStack: mem.GetKernelStack(),
			Slab:        mem.GetSlab(),
			Sock:        mem.GetSock(),
			Shmem:       mem.GetShmem(),
			SwapUsage:   mem.GetSwapUsage(),
		}
		m.MemoryEvents = &stats.MemoryEvents{
			Max:     mem.GetMaxEvents(),
			Oom:     mem.GetOomEvents(),
			OomKill: mem.GetOomKillEvents(),
		}
	}
	if p := s.GetPids(); p != nil {
		m.Pids = &stats.PidsStat{Current: p.GetCurrent(), Limit: p.GetLimit()}
	}
	if ios := s.GetIo(); len(ios) > 0 {
		m.Io = &stats.IOStat{}
		for _, io := range ios {
			m.Io.Usage = append(m.Io.Usage, &stats.IOEntry{
				Major:  io.GetMajor(),
				Minor:  io.GetMinor(),
				Rbytes: io.GetRbytes(),
				Wbytes: io.GetWbytes(),
				Rios:   io.GetRios(),
				Wios:   io.GetWios(),
			})
		}
	}
	return m
}

// hostMetrics turns the usage of the sandbox's host cgroup (QEMU and
// virtiofsd, the VM's guest memory included) into containerd's cgroup v2
// metrics type, the same type the guest's statistics take.
func hostMetrics(u hostcgroup.Usage) *stats.Metrics {
	return &stats.Metrics{
		CPU: &stats.CPUStat{
			UsageUsec:     u.CPUUsageUsec,
			UserUsec:      u.CPUUserUsec,
			SystemUsec:    u.CPUSystemUsec,
			NrPeriods:     u.NrPeriods,
			NrThrottled:   u.NrThrottled,
			ThrottledUsec: u.ThrottledUsec,
		},
		Memory: &stats.MemoryStat{
			Usage:        u.MemoryBytes,
			UsageLimit:   u.MemoryLimitBytes,
			Anon:         u.Anon,
			File:         u.File,
			Shmem:        u.Shmem,
			InactiveFile: u.InactiveFile,
		},
		MemoryEvents: &stats.MemoryEvents{OomKill: u.OOMKills},
		Pids:         &stats.PidsStat{Current: u.Pids},
	}
}
