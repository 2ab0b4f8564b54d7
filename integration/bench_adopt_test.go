package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// BenchmarkAdopt measures what a pod's start costs with a VM factory's warm
// VM: Adopt of a warm sandbox (q35, serial agent) with the pod's own ID,
// hostname, cgroup and 256 MiB more memory, without a network; the op is
// the adoption alone. It reports the median adoption and, for comparison,
// the median warm boot (StartWarm: what a start without a warm VM pays
// beside the pod steps).
func BenchmarkAdopt(b *testing.B) {
	c := testConfig(b)
	c.Agent.Transport = "serial"
	c.Hypervisor.QEMU.Machine = qemu.MachineQ35
	c.Hypervisor.VCPUs, c.Hypervisor.MemoryMiB = 1, 512
	c.Hypervisor.MaxVCPUs, c.Hypervisor.MaxMemoryMiB = 2, 1024
	ctx := withTimeout(b, 30*time.Minute)
	var boots, adopts []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		id, err := sandbox.NewWarmID()
		if err != nil {
			b.Fatal(err)
		}
		wc, err := launch.SandboxConfig(c, id)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		sb, err := sandbox.StartWarm(ctx, wc)
		if err != nil {
			b.Fatal(err)
		}
		boots = append(boots, time.Since(start))
		pc, err := launch.SandboxConfig(c, fmt.Sprintf("bench-adopt-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		pc.VM.MemoryMiB = 768
		b.StartTimer()
		start = time.Now()
		err = sb.Adopt(ctx, pc)
		adopts = append(adopts, time.Since(start))
		b.StopTimer()
		if err != nil {
			_ = sb.Stop(context.Background())
			b.Fatal(err)
		}
		if err := sb.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(medianDuration(adopts).Milliseconds()), "adopt-ms")
	b.ReportMetric(float64(medianDuration(boots).Milliseconds()), "warm-boot-ms")
}
