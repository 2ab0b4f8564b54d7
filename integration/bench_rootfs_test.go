package integration

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// rootfsBenchVMs is how many VMs run at once for the shared-memory figure.
const rootfsBenchVMs = 10

// BenchmarkImageKind compares the two kinds of guest image of the same
// image directory (HULL_TEST_ASSETS_ROOTFS: the hull kernel, the same agent
// bytes as an initrd and as a read-only erofs root image mapped through
// virtio-pmem with DAX). Each iteration starts one sandbox of each kind in
// turn, so that drift in the machine's load hits both; the figures are
// medians, reported with the kind as prefix:
//
//   - "-start-ms": a whole sandbox start (QEMU, virtiofsd, boot, the
//     agent's first answer and the sandbox's setup) as the host sees it;
//   - "-guest-boot-to-serve-ms": the guest's own time from kernel start to
//     the agent serving;
//   - "-qemu-cpu-ms": the CPU time QEMU used up to the end of the start
//     (under TCG the guest's work; steadier than wall time on a loaded
//     host);
//   - "-pss-1vm-MiB": the proportional set size (PSS,
//     /proc/PID/smaps_rollup) of QEMU and virtiofsd together for one idle
//     VM;
//   - "-pss-per-vm-10vm-MiB": the same per VM with rootfsBenchVMs idle VMs
//     at once (measured once per kind): pages shared between the VMs (the
//     root image's, with DAX) count once in total.
//
// "rootfs/initrd-*" are the ratios. Run with -benchtime Nx for N pairs
// (make bench uses 5).
func BenchmarkImageKind(b *testing.B) {
	dir, _ := rootfsAssets(b)
	kinds := []string{guestimage.KindInitrd, guestimage.KindRootfs}
	type samples struct {
		start, guest, cpu []time.Duration
		pss               []float64
	}
	runs := map[string]*samples{}
	for _, k := range kinds {
		runs[k] = &samples{}
	}
	for i := 0; b.Loop(); i++ {
		for _, kind := range kinds {
			c := rootfsBenchConfig(b, dir, kind)
			t0 := time.Now()
			sbs, err := startSandboxes(c, fmt.Sprintf("kind-%s-%d", kind, i), 1)
			if err != nil {
				b.Fatal(err)
			}
			r := runs[kind]
			r.start = append(r.start, time.Since(t0))
			r.cpu = append(r.cpu, processCPU(sbs[0].VM().Describe().PID))
			d, err := sbs[0].System().GuestDetails(withTimeout(b, time.Minute), &agent.GuestDetailsRequest{})
			if err != nil {
				stopSandboxes(sbs)
				b.Fatal(err)
			}
			r.guest = append(r.guest, d.GetBootToServe().AsDuration())
			r.pss = append(r.pss, idlePSSMiB(c))
			stopSandboxes(sbs)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) }
	med := map[string]map[string]float64{}
	for _, kind := range kinds {
		r := runs[kind]
		med[kind] = map[string]float64{
			"start-ms":               ms(medianDuration(r.start)),
			"guest-boot-to-serve-ms": ms(medianDuration(r.guest)),
			"qemu-cpu-ms":            ms(medianDuration(r.cpu)),
			"pss-1vm-MiB":            medianF(r.pss),
		}
		c := rootfsBenchConfig(b, dir, kind)
		sbs, err := startSandboxes(c, "kind-"+kind+"-many", rootfsBenchVMs)
		if err != nil {
			b.Fatal(err)
		}
		med[kind]["pss-per-vm-10vm-MiB"] = idlePSSMiB(c) / rootfsBenchVMs
		stopSandboxes(sbs)
		b.Logf("%s: starts %v, guest boot to serve %v, QEMU CPU %v, PSS of one VM %v MiB", kind, r.start, r.guest, r.cpu, r.pss)
	}
	for _, unit := range slices.Sorted(maps.Keys(med[kinds[0]])) {
		for _, kind := range kinds {
			b.ReportMetric(med[kind][unit], kind+"-"+unit)
		}
		if base := med[guestimage.KindInitrd][unit]; base > 0 {
			b.ReportMetric(med[guestimage.KindRootfs][unit]/base, "rootfs/initrd-"+strings.TrimSuffix(strings.TrimSuffix(unit, "-ms"), "-MiB"))
		}
	}
}

func rootfsBenchConfig(b *testing.B, dir, kind string) *config.Config {
	c := testConfig(b)
	c.Agent.Transport = "serial"
	c.Image.AssetsDir = dir
	c.Image.Kind = kind
	return c
}

// startSandboxes starts n sandboxes of c at once (the boot slots queue
// them) and returns them once all run; on error it stops those that
// started.
func startSandboxes(c *config.Config, prefix string, n int) ([]*sandbox.Sandbox, error) {
	sbs := make([]*sandbox.Sandbox, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sc, err := launch.SandboxConfig(c, fmt.Sprintf("%s-%d", prefix, i))
			if err != nil {
				errs[i] = err
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			sbs[i], errs[i] = sandbox.Start(ctx, sc)
		})
	}
	wg.Wait()
	var started []*sandbox.Sandbox
	var first error
	for i := range n {
		if errs[i] != nil && first == nil {
			first = errs[i]
		}
		if sbs[i] != nil {
			started = append(started, sbs[i])
		}
	}
	if first != nil {
		stopSandboxes(started)
		return nil, first
	}
	return started, nil
}

func stopSandboxes(sbs []*sandbox.Sandbox) {
	for _, sb := range sbs {
		_ = sb.Stop(context.Background())
	}
}

// idlePSSMiB waits for the guests to settle and returns the summed PSS of
// every process of c's sandboxes (QEMU and virtiofsd: the processes whose
// command line names c's state root) in MiB.
func idlePSSMiB(c *config.Config) float64 {
	time.Sleep(2 * time.Second)
	var kib uint64
	for _, pid := range processesMentioning(c.Runtime.StateDir) {
		_, pss := smapsRollup(pid)
		kib += pss
	}
	return float64(kib) / 1024
}
