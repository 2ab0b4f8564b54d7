package shim

import (
	"testing"

	"github.com/hull-runtime/hull/internal/hostcgroup"
)

func TestHostMetrics(t *testing.T) {
	m := hostMetrics(hostcgroup.Usage{MemoryBytes: 200 << 20, MemoryLimitBytes: 768 << 20, InactiveFile: 5, OOMKills: 1, CPUUsageUsec: 42, NrThrottled: 3, Pids: 12})
	if m.Memory.Usage != 200<<20 || m.Memory.UsageLimit != 768<<20 || m.Memory.InactiveFile != 5 {
		t.Errorf("memory %+v", m.Memory)
	}
	if m.CPU.UsageUsec != 42 || m.CPU.NrThrottled != 3 || m.Pids.Current != 12 || m.MemoryEvents.OomKill != 1 {
		t.Errorf("metrics %+v", m)
	}
}
