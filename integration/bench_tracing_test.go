package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/podmetrics"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/tracing"
)

// BenchmarkSandboxTracing measures what tracing costs a sandbox's start
// without containerd: sandbox.Start of the hull kernel's image with
// tracing off, and with it on (every boot step and agent call a span, the
// agent's spans relayed, exporting over OTLP/HTTP to a real collector),
// alternating start by start. Each -benchtime round is one pair. It
// reports the medians of the start's wall time, of the CPU time the host
// side (this process: the sandbox code, the agent client, the exporter)
// used during it, and of QEMU's CPU time up to the end of the start (the
// guest's work, the agent's spans included, plus TCG's translation; far
// steadier than wall time on a loaded machine), and their ratios on/off.
func BenchmarkSandboxTracing(b *testing.B) {
	assets, _ := hullKernelAssets(b)
	col := e2e.StartCollector(b)
	exp, err := tracing.New(context.Background(), config.Tracing{Enabled: true, Endpoint: col.HTTP, Protocol: "http", SamplingRatio: 1}, "hull-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = exp.Shutdown(context.Background()) })
	c := testConfig(b)
	c.Image.AssetsDir = assets
	c.Agent.DialTimeout = config.Duration{Duration: 3 * time.Minute}
	type sample struct{ wall, cpu, vmm time.Duration }
	runs := map[bool][]sample{}
	start := func(i int, traced bool) sample {
		sc, err := launch.SandboxConfig(c, fmt.Sprintf("tr-%d-%t", i, traced))
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		if traced {
			sc.Tracing = exp
			// A sampled root span of the benchmark's own, as a caller
			// that traces (containerd) has.
			var root trace.Span
			ctx, root = exp.TracerProvider().Tracer("bench").Start(ctx, "bench")
			defer root.End()
		}
		cpu0, t0 := selfCPU(b), time.Now()
		sb, err := sandbox.Start(ctx, sc)
		s := sample{wall: time.Since(t0), cpu: selfCPU(b) - cpu0}
		if err != nil {
			b.Fatalf("starting sandbox (tracing %t): %v", traced, err)
		}
		u, err := podmetrics.ReadProc(sb.HostProcesses()["vmm"], false)
		if err != nil {
			b.Fatal(err)
		}
		s.vmm = time.Duration(u.CPUSeconds * float64(time.Second))
		if err := sb.Stop(context.Background()); err != nil {
			b.Fatal(err)
		}
		return s
	}
	for i := 0; b.Loop(); i++ {
		// Alternate which side goes first, so that drift hits both.
		for _, traced := range []bool{i%2 == 1, i%2 == 0} {
			runs[traced] = append(runs[traced], start(i, traced))
		}
	}
	med := func(traced bool, f func(sample) time.Duration) time.Duration {
		ds := make([]time.Duration, len(runs[traced]))
		for i, s := range runs[traced] {
			ds[i] = f(s)
		}
		return medianDuration(ds)
	}
	wall := func(s sample) time.Duration { return s.wall }
	cpu := func(s sample) time.Duration { return s.cpu }
	vmm := func(s sample) time.Duration { return s.vmm }
	off, on := med(false, wall), med(true, wall)
	offCPU, onCPU := med(false, cpu), med(true, cpu)
	b.ReportMetric(float64(off.Milliseconds()), "off-ms")
	b.ReportMetric(float64(on.Milliseconds()), "on-ms")
	b.ReportMetric(on.Seconds()/off.Seconds(), "on/off")
	b.ReportMetric(float64(offCPU.Microseconds())/1e3, "off-cpu-ms")
	b.ReportMetric(float64(onCPU.Microseconds())/1e3, "on-cpu-ms")
	b.ReportMetric(onCPU.Seconds()/offCPU.Seconds(), "cpu-on/off")
	offVMM, onVMM := med(false, vmm), med(true, vmm)
	b.ReportMetric(float64(offVMM.Milliseconds()), "off-vmm-cpu-ms")
	b.ReportMetric(float64(onVMM.Milliseconds()), "on-vmm-cpu-ms")
	b.ReportMetric(onVMM.Seconds()/offVMM.Seconds(), "vmm-cpu-on/off")
	for _, traced := range []bool{false, true} {
		for i, s := range runs[traced] {
			b.Logf("tracing %t, start %d: %v, host CPU %v, QEMU CPU %v", traced, i, s.wall.Round(time.Millisecond), s.cpu, s.vmm.Round(time.Millisecond))
		}
	}
}
