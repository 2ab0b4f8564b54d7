package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/podmetrics"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// benchMonitorSandboxes are the sandbox counts BenchmarkMonitorScrape
// measures; HULL_BENCH_MONITOR_SANDBOXES overrides them ("1,5" on a loaded
// machine: each sandbox is a TCG VM).
var benchMonitorSandboxes = []int{1, 20}

// BenchmarkMonitorScrape measures one scrape of `hull monitor` (Monitor's
// Gather) over N running sandboxes, each a real VM (the hull kernel's
// image, HULL_TEST_ASSETS_HULLKERNEL: the smallest and quickest boot) with
// its agent whose metrics endpoint serves the sandbox as the shim does
// (SandboxSource, the guest's counters from the agent). It reports the scrape with the guest's
// numbers cached (scrape-ms: scrapes closer together than
// podmetrics.GuestCacheFor) and one scrape that asks every agent
// (cold-scrape-ms), the CPU time of a cached scrape (cpu-ms/scrape), and
// the series of the exposition.
func BenchmarkMonitorScrape(b *testing.B) {
	counts := benchMonitorSandboxes
	if v := os.Getenv("HULL_BENCH_MONITOR_SANDBOXES"); v != "" {
		counts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("HULL_BENCH_MONITOR_SANDBOXES=%q: want counts like 1,20", v)
			}
			counts = append(counts, n)
		}
	}
	for _, n := range counts {
		b.Run(fmt.Sprintf("sandboxes=%d", n), func(b *testing.B) { benchMonitorScrape(b, n) })
	}
}

func benchMonitorScrape(b *testing.B, n int) {
	assets, _ := hullKernelAssets(b)
	c := testConfig(b)
	c.Image.AssetsDir = assets
	c.Hypervisor.MemoryMiB = 256
	// Many TCG boots on a loaded machine: room to reach the agent.
	c.Agent.DialTimeout = config.Duration{Duration: 3 * time.Minute}
	// Boots two at a time: the machine has two cores.
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			sc, err := launch.SandboxConfig(c, fmt.Sprintf("mon-%d", i))
			if err != nil {
				errs <- err
				return
			}
			errs <- serveBenchSandbox(b, sc)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	m, err := podmetrics.NewMonitor(c.Runtime.StateDir)
	if err != nil {
		b.Fatal(err)
	}
	// A cold scrape: every guest is asked.
	time.Sleep(podmetrics.GuestCacheFor)
	start := time.Now()
	fams, err := m.Gather()
	cold := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	series := 0
	for _, f := range fams {
		if f.GetName() == "hull_monitor_sandboxes" && f.GetMetric()[0].GetGauge().GetValue() != float64(n) {
			b.Fatalf("the scrape reached %v sandboxes, want %d", f.GetMetric()[0].GetGauge().GetValue(), n)
		}
		series += len(f.GetMetric())
	}
	b.ResetTimer()
	cpu0 := selfCPU(b)
	for b.Loop() {
		if _, err := m.Gather(); err != nil {
			b.Fatal(err)
		}
	}
	// The CPU the scrapes took, the shims' side included (the endpoints
	// are served by this process): steadier than wall time on a loaded
	// machine.
	b.ReportMetric(float64((selfCPU(b)-cpu0).Microseconds())/1e3/float64(b.N), "cpu-ms/scrape")
	b.ReportMetric(float64(cold.Microseconds())/1e3, "cold-scrape-ms")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "scrape-ms")
	b.ReportMetric(float64(series), "series")
}

// serveBenchSandbox starts a sandbox and serves its metrics endpoint until
// the benchmark ends.
func serveBenchSandbox(b *testing.B, sc sandbox.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sb, err := sandbox.Start(ctx, sc)
	if err != nil {
		return fmt.Errorf("starting sandbox %s: %w", sc.ID, err)
	}
	col := podmetrics.NewCollector(podmetrics.PodLabels{Sandbox: sc.ID}, podmetrics.SandboxSource(sb))
	srv, err := podmetrics.Serve(sb.StateDir(), col, func() podmetrics.Info { return podmetrics.Info{Sandbox: sc.ID} })
	if err != nil {
		_ = sb.Stop(context.Background())
		return err
	}
	b.Cleanup(func() {
		_ = srv.Close()
		_ = sb.Stop(context.Background())
	})
	return nil
}

// selfCPU is the CPU time (user and system) this process used so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
