package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// BenchmarkWarmUp measures what a warm VM's warm-up (sandbox.Config.WarmUp)
// saves a pod's first container: the time from Adopt's start to the pod's
// first container (busybox `true`: create, start, wait) having run, with a
// warm VM booted with and without the warm-up, and, for comparison, a cold
// Start and the same first container. Each run boots the three (q35,
// serial agent, 512 MiB, no network), in turn; the deletion of the
// container and the stops are not part of those times. It reports the
// medians, the median warm-up step of the warm starts that ran it, and
// the median Stop of all the sandboxes. Each run logs the adoption's
// phases and the first container's create, start and wait.
func BenchmarkWarmUp(b *testing.B) {
	c := testConfig(b)
	c.Agent.Transport = "serial"
	c.Hypervisor.QEMU.Machine = qemu.MachineQ35
	ctx := withTimeout(b, 30*time.Minute)
	bundle, spec := busyboxBundle(b, "true")
	// firstContainer runs the first container and returns how long its
	// create, start and wait took.
	firstContainer := func(sb *sandbox.Sandbox, id string) string {
		t0 := time.Now()
		ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: id, Bundle: bundle, Spec: spec})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := ctr.Start(ctx); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		st, err := ctr.Wait(ctx)
		if err != nil || st.Code != 0 {
			b.Fatalf("first container: status %v, %v", st, err)
		}
		return fmt.Sprintf("create %s, start %s, wait %s", t1.Sub(t0), t2.Sub(t1), time.Since(t2))
	}
	phases := func(sb *sandbox.Sandbox) string {
		var s []string
		for _, p := range sb.BootPhases() {
			s = append(s, fmt.Sprintf("%s %s", p.Name, p.Took.Round(time.Millisecond)))
		}
		return strings.Join(s, ", ")
	}
	// stops are the times of the sandboxes' stops (Stop with the exited
	// first container still in the guest): what a pod's removal and the
	// end of `ctr run --rm` wait for.
	var stops []time.Duration
	stop := func(sb *sandbox.Sandbox) {
		start := time.Now()
		if err := sb.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		stops = append(stops, time.Since(start))
	}
	// adopted boots a warm sandbox (not timed) and times its adoption by
	// the pod id up to its first container's exit.
	adopted := func(id string, warmUp bool) (took, warmUpStep time.Duration) {
		sb, err := sandbox.StartWarm(ctx, warmConfig(b, c, warmUp))
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range sb.BootPhases() {
			if p.Name == "warm up" {
				warmUpStep = p.Took
			}
		}
		pc, err := launch.SandboxConfig(c, id)
		if err != nil {
			b.Fatal(err)
		}
		pc.VM.HotplugNICs = 2
		start := time.Now()
		if err := sb.Adopt(ctx, pc); err != nil {
			_ = sb.Stop(context.Background())
			b.Fatal(err)
		}
		adoption := phases(sb)
		ctr := firstContainer(sb, "first")
		took = time.Since(start)
		b.Logf("%s (warm-up %v): adoption: %s; first container: %s", id, warmUp, adoption, ctr)
		stop(sb)
		return took, warmUpStep
	}
	var cold, plain, warmed, steps []time.Duration
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		pc, err := launch.SandboxConfig(c, fmt.Sprintf("bench-cold-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		sb, err := sandbox.Start(ctx, pc)
		if err != nil {
			b.Fatal(err)
		}
		ctr := firstContainer(sb, "first")
		cold = append(cold, time.Since(start))
		b.Logf("cold %d: first container: %s", i, ctr)
		stop(sb)

		took, _ := adopted(fmt.Sprintf("bench-plain-%d", i), false)
		plain = append(plain, took)
		took, step := adopted(fmt.Sprintf("bench-warmed-%d", i), true)
		warmed = append(warmed, took)
		steps = append(steps, step)
		b.Logf("run %d: cold %s, adopted %s, adopted after warm-up %s (warm-up step %s)", i, cold[i], plain[i], warmed[i], step)
	}
	b.ReportMetric(float64(medianDuration(warmed).Milliseconds()), "warmed-adopt-first-ms")
	b.ReportMetric(float64(medianDuration(plain).Milliseconds()), "adopt-first-ms")
	b.ReportMetric(float64(medianDuration(cold).Milliseconds()), "cold-first-ms")
	b.ReportMetric(float64(medianDuration(steps).Milliseconds()), "warm-up-step-ms")
	b.ReportMetric(float64(medianDuration(stops).Milliseconds()), "stop-ms")
}
