package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
)

// BenchmarkIdleMemory is the memory goal's measurement alone: the host
// PSS per VM of rootfsBenchVMs idle sandboxes of the default guest image
// (the hull kernel's erofs root image, HULL_TEST_ASSETS_ROOTFS) with the
// default configuration (q35, 1 vCPU, 512 MiB; the agent over serial
// where vsock is unavailable), idleSettle after the last start, split as
// BenchmarkImageKind splits it. It also reports what the guests say they
// use (MemTotal less MemAvailable, from the agent) and the CPU time their
// QEMUs used up to the measurement (boot and idle). One round of
// rootfsBenchVMs VMs per iteration; the figures are medians of the rounds.
// It fails when the idle VMs' TCG translation cache comes within 1 MiB of
// its size: the boot then fills the cache (or nearly), so a pod's second
// container start would cost about 3 times the CPU time
// (docs/benchmarks.md), and the default size (qemu.DefaultTCGCacheMiB)
// needs raising.
func BenchmarkIdleMemory(b *testing.B) {
	dir, _ := rootfsAssets(b)
	var splits []pssSplit
	var guestUsed, cpu []float64
	for i := 0; b.Loop(); i++ {
		c := imageBenchConfig(b, imageKind{"hull-rootfs", dir, guestimage.KindRootfs})
		sbs, err := startSandboxes(c, "idle", rootfsBenchVMs)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(idleSettle)
		split := sandboxPSS(c).per(rootfsBenchVMs)
		vmCPU := qemuCPU(c).Seconds() / rootfsBenchVMs
		var used float64
		for _, sb := range sbs {
			d, err := sb.System().GuestDetails(withTimeout(b, time.Minute), &agent.GuestDetailsRequest{})
			if err != nil {
				stopSandboxes(sbs)
				b.Fatal(err)
			}
			used += float64(d.GetMemoryTotalBytes()-d.GetMemoryAvailableBytes()) / (1 << 20)
		}
		stopSandboxes(sbs)
		splits = append(splits, split)
		guestUsed = append(guestUsed, used/float64(len(sbs)))
		cpu = append(cpu, vmCPU)
		b.Logf("round %d: PSS per VM with %d VMs: %s; guest MemTotal-MemAvailable %.1f MiB; QEMU CPU time %.2f s per VM",
			i, rootfsBenchVMs, split, used/float64(len(sbs)), vmCPU)
		if size := tcgCacheSize(c); mib(split.tcg) >= float64(size)-1 {
			b.Errorf("round %d: a boot fills the TCG translation cache: %.1f MiB of %d MiB used per idle VM", i, mib(split.tcg), size)
		}
	}
	pick := func(f func(pssSplit) float64) float64 {
		v := make([]float64, len(splits))
		for i, s := range splits {
			v[i] = f(s)
		}
		return medianF(v)
	}
	b.ReportMetric(pick(pssSplit.totalMiB), "pss-per-vm-MiB")
	b.ReportMetric(pick(func(s pssSplit) float64 { return mib(s.guestRAM) }), "guest-ram-MiB")
	b.ReportMetric(pick(func(s pssSplit) float64 { return mib(s.tcg) }), "tcg-MiB")
	b.ReportMetric(pick(func(s pssSplit) float64 { return mib(s.qemuAnon) }), "qemu-anon-MiB")
	b.ReportMetric(pick(func(s pssSplit) float64 { return mib(s.qemuFiles) }), "qemu-files-MiB")
	b.ReportMetric(pick(func(s pssSplit) float64 { return mib(s.image) }), "image-MiB")
	b.ReportMetric(pick(func(s pssSplit) float64 { return mib(s.virtiofsd) }), "virtiofsd-MiB")
	b.ReportMetric(medianF(guestUsed), "guest-used-MiB")
	b.ReportMetric(medianF(cpu), "qemu-cpu-s")
}

// qemuCPU is the CPU time the QEMUs of c's sandboxes have used so far: the
// boot, and what the idle guests have asked of QEMU since (free page
// reporting among it).
func qemuCPU(c *config.Config) time.Duration {
	var d time.Duration
	for _, pid := range processesMentioning(c.Runtime.StateDir) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) != "virtiofsd" {
			d += processCPU(pid)
		}
	}
	return d
}

// tcgCacheSize is the TCG translation cache size of c's VMs in MiB.
func tcgCacheSize(c *config.Config) uint32 {
	if s := c.Hypervisor.QEMU.TCGCacheMiB; s != 0 {
		return s
	}
	return qemu.DefaultTCGCacheMiB
}
