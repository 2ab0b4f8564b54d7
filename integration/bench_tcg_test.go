package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// tcgCacheSizes are the translation cache sizes BenchmarkTCGCache compares,
// the ratios taken to the first: 128 MiB, above what a boot and a first
// container translate (about 57 MiB), as is 64; 48 and 46 MiB, emptied
// once during the first container; the default, 44 MiB, the same, 2 to 4
// MiB above what a boot translates (40 to 42 MiB); 40 MiB, below it.
var tcgCacheSizes = []uint32{128, 64, 48, 46, qemu.DefaultTCGCacheMiB, 40}

// BenchmarkTCGCache measures what the size of TCG's translated-code cache
// (hypervisor.qemu.tcg_cache_mib, QEMU's tb-size) costs and saves. Each
// iteration boots the rootfs image (HULL_TEST_ASSETS_ROOTFS, the default
// kind) once with each size in turn (q35, 512 MiB, serial agent), runs
// three containers one after the other (busybox `true`: create, start,
// wait, delete), and reads the idle VM's memory. Medians, with the size as prefix ("tb128-" ...):
//
//   - "-start-ms" and "-start-qemu-cpu-ms": the sandbox start, and QEMU's
//     CPU time up to its end (the boot's translation included; a cache
//     smaller than what the boot translates is flushed and the hot code
//     translated again);
//   - "-container-ms" and "-container-qemu-cpu-ms": the first container,
//     wall time and QEMU's CPU time (code the boot did not run, translated
//     into a cache that may be full);
//   - "-second-container-ms" and "-second-container-qemu-cpu-ms": the same
//     container again right after (the same code, translated once already
//     unless the cache was flushed since);
//   - "-third-container-ms" and "-third-container-qemu-cpu-ms": the same
//     again (a cache that was flushed during the first container holds the
//     container path by now, unless it is flushed at every container);
//   - "-pss-MiB" and "-tcg-MiB": the PSS of QEMU and virtiofsd idleSettle
//     after the containers, and the part of it that is the cache.
//
// Run with -benchtime Nx for N rounds (make bench uses 5).
func BenchmarkTCGCache(b *testing.B) {
	dir, _ := rootfsAssets(b)
	k := imageKind{name: "hull-rootfs", dir: dir, kind: "rootfs"}
	type samples struct {
		start, startCPU, ctr, ctrCPU, ctr2, ctr2CPU []time.Duration
		ctr3, ctr3CPU                               []time.Duration
		pss, tcg                                    []float64
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
			for j := range 3 {
				t1, c1 := time.Now(), processCPU(pid)
				if err := runTrue(ctx, sb, fmt.Sprintf("c%d", j), bundle, spec); err != nil {
					stopSandboxes(sbs)
					b.Fatalf("container %d with tb-size %d: %v", j, size, err)
				}
				switch j {
				case 0:
					r.ctr = append(r.ctr, time.Since(t1))
					r.ctrCPU = append(r.ctrCPU, processCPU(pid)-c1)
				case 1:
					r.ctr2 = append(r.ctr2, time.Since(t1))
					r.ctr2CPU = append(r.ctr2CPU, processCPU(pid)-c1)
				default:
					r.ctr3 = append(r.ctr3, time.Since(t1))
					r.ctr3CPU = append(r.ctr3CPU, processCPU(pid)-c1)
				}
			}
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
		b.ReportMetric(ms(medianDuration(r.ctr2)), p+"second-container-ms")
		b.ReportMetric(ms(medianDuration(r.ctr2CPU)), p+"second-container-qemu-cpu-ms")
		b.ReportMetric(ms(medianDuration(r.ctr3)), p+"third-container-ms")
		b.ReportMetric(ms(medianDuration(r.ctr3CPU)), p+"third-container-qemu-cpu-ms")
		b.ReportMetric(medianF(r.pss), p+"pss-MiB")
		b.ReportMetric(medianF(r.tcg), p+"tcg-MiB")
		b.Logf("tb-size %d: starts %v (QEMU CPU %v), first containers %v (QEMU CPU %v), second containers %v (QEMU CPU %v), third containers %v (QEMU CPU %v), PSS %v MiB, of which TCG cache %v MiB",
			size, r.start, r.startCPU, r.ctr, r.ctrCPU, r.ctr2, r.ctr2CPU, r.ctr3, r.ctr3CPU, r.pss, r.tcg)
	}
	e2e.LogLoad(b)
}

// runTrue runs a container of bundle to its end and deletes it; an exit
// status other than 0 is an error.
func runTrue(ctx context.Context, sb *sandbox.Sandbox, id, bundle string, spec *specs.Spec) error {
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: id, Bundle: bundle, Spec: spec})
	if err != nil {
		return err
	}
	if err := ctr.Start(ctx); err != nil {
		_ = ctr.Delete(context.Background(), true)
		return err
	}
	st, err := ctr.Wait(ctx)
	if err == nil && st.Code != 0 {
		err = fmt.Errorf("exit status %d", st.Code)
	}
	if derr := ctr.Delete(ctx, err != nil); err == nil {
		err = derr
	}
	return err
}
