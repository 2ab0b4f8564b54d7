package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// tcgCacheSizes are the translation cache sizes BenchmarkTCGCache compares:
// the size used before, the default, and half the default.
var tcgCacheSizes = []uint32{128, qemu.DefaultTCGCacheMiB, qemu.DefaultTCGCacheMiB / 2}

// BenchmarkTCGCache measures what the size of TCG's translated-code cache
// (hypervisor.qemu.tcg_cache_mib, QEMU's tb-size) costs and saves. Each
// iteration boots the rootfs image (HULL_TEST_ASSETS_ROOTFS, the default
// kind) once with each size in turn (q35, 512 MiB, serial agent), runs a
// first container (busybox `true`: create, start, wait, delete), and reads
// the idle VM's memory. Medians, with the size as prefix ("tb128-" ...):
//
//   - "-start-ms" and "-start-qemu-cpu-ms": the sandbox start, and QEMU's
//     CPU time up to its end (the boot's translation included; a cache
//     smaller than what the boot translates is flushed and the hot code
//     translated again);
//   - "-container-ms" and "-container-qemu-cpu-ms": the first container,
//     wall time and QEMU's CPU time (code the boot did not run, translated
//     into a cache that may be full);
//   - "-pss-MiB" and "-tcg-MiB": the PSS of QEMU and virtiofsd idleSettle
//     after the container, and the part of it that is the cache.
//
// Run with -benchtime Nx for N rounds (make bench uses 5).
func BenchmarkTCGCache(b *testing.B) {
	dir, _ := rootfsAssets(b)
	k := imageKind{name: "hull-rootfs", dir: dir, kind: "rootfs"}
	type samples struct {
		start, startCPU, ctr, ctrCPU []time.Duration
		pss, tcg                     []float64
	}
	runs := map[uint32]*samples{}
	for _, size := range tcgCacheSizes {
		runs[size] = &samples{}
	}
	bundle, spec := busyboxBundle(b, "true")
	for i := 0; b.Loop(); i++ {
		for _, size := range tcgCacheSizes {
			c := imageBenchConfig(b, k)
			c.Hypervisor.QEMU.TCGCacheMiB = size
			r := runs[size]
			t0 := time.Now()
			sbs, err := startSandboxes(c, fmt.Sprintf("tcg-%d-%d", size, i), 1)
			if err != nil {
				b.Fatal(err)
			}
			sb := sbs[0]
			pid := sb.VM().Describe().PID
			r.start = append(r.start, time.Since(t0))
			cpu0 := processCPU(pid)
			r.startCPU = append(r.startCPU, cpu0)
			ctx := withTimeout(b, 5*time.Minute)
			t1 := time.Now()
			ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "first", Bundle: bundle, Spec: spec})
			if err == nil {
				err = ctr.Start(ctx)
			}
			if err == nil {
				var st sandbox.ExitStatus
				st, err = ctr.Wait(ctx)
				if err == nil && st.Code != 0 {
					err = fmt.Errorf("exit status %d", st.Code)
				}
			}
			if err == nil {
				err = ctr.Delete(ctx, false)
			}
			if err != nil {
				stopSandboxes(sbs)
				b.Fatalf("first container with tb-size %d: %v", size, err)
			}
			r.ctr = append(r.ctr, time.Since(t1))
			r.ctrCPU = append(r.ctrCPU, processCPU(pid)-cpu0)
			time.Sleep(idleSettle)
			s := sandboxPSS(c)
			r.pss = append(r.pss, s.totalMiB())
			r.tcg = append(r.tcg, mib(s.tcg))
			stopSandboxes(sbs)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) }
	for _, size := range tcgCacheSizes {
		r := runs[size]
		p := fmt.Sprintf("tb%d-", size)
		b.ReportMetric(ms(medianDuration(r.start)), p+"start-ms")
		b.ReportMetric(ms(medianDuration(r.startCPU)), p+"start-qemu-cpu-ms")
		b.ReportMetric(ms(medianDuration(r.ctr)), p+"container-ms")
		b.ReportMetric(ms(medianDuration(r.ctrCPU)), p+"container-qemu-cpu-ms")
		b.ReportMetric(medianF(r.pss), p+"pss-MiB")
		b.ReportMetric(medianF(r.tcg), p+"tcg-MiB")
		b.Logf("tb-size %d: starts %v (QEMU CPU %v), first containers %v (QEMU CPU %v), PSS %v MiB, of which TCG cache %v MiB",
			size, r.start, r.startCPU, r.ctr, r.ctrCPU, r.pss, r.tcg)
	}
}
