package containerd

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// BenchmarkFactoryCtrRun times `ctr run --rm <busybox> true` end to end
// three ways on one containerd 1.6 daemon (Debian's, as BenchmarkCtrRun),
// in turn in each round: with runc, with hull booting the pod's VM (cold),
// and with hull taking a warm VM from a factory of one (cached); medians over -benchtime Nx rounds (make
// bench uses 5), with the ratios. Each round starts with the factory's VM
// ready (the refill after the cached run is not timed), and the cold run
// finds no factory socket (it is moved aside), so that neither run shares
// the CPU with a warm VM's boot.
func BenchmarkFactoryCtrRun(b *testing.B) {
	containerdPath, ctrPath := daemonBinaries(b, "1.6")
	d := startDaemonWith(b, containerdPath, ctrPath, daemonOptions{assetsDir: factoryAssets()})
	f := startFactory(b, d, 1)
	aside := f.Socket + ".aside"
	var cold, cached, runc []time.Duration
	timed := func(into *[]time.Duration, args ...string) {
		start := time.Now()
		d.mustCtr(b, append([]string{"run", "--rm"}, args...)...)
		*into = append(*into, time.Since(start))
	}
	var hits uint64
	for i := 0; b.Loop(); i++ {
		f.WaitReady(b)
		if err := os.Rename(f.Socket, aside); err != nil {
			b.Fatal(err)
		}
		timed(&runc, "--runtime", "io.containerd.runc.v2", imageName, fmt.Sprintf("bench-runc-%d", i), "true")
		timed(&cold, "--runtime", runtimeName, imageName, fmt.Sprintf("bench-cold-%d", i), "true")
		if err := os.Rename(aside, f.Socket); err != nil {
			b.Fatal(err)
		}
		timed(&cached, "--runtime", runtimeName, imageName, fmt.Sprintf("bench-cached-%d", i), "true")
		st, err := f.Status()
		if err != nil {
			b.Fatal(err)
		}
		if st.Hits != hits+1 {
			b.Fatalf("round %d: the cached run was not a hit (%d hits, %d misses)", i, st.Hits, st.Misses)
		}
		hits = st.Hits
	}
	cm, hm, rm := medianOf(cold), medianOf(cached), medianOf(runc)
	b.ReportMetric(float64(cm.Milliseconds()), "cold-ms")
	b.ReportMetric(float64(hm.Milliseconds()), "cached-ms")
	b.ReportMetric(float64(rm.Milliseconds()), "runc-ms")
	b.ReportMetric(cm.Seconds()/rm.Seconds(), "cold/runc")
	b.ReportMetric(hm.Seconds()/rm.Seconds(), "cached/runc")
	b.ReportMetric(hm.Seconds()/cm.Seconds(), "cached/cold")
	b.Logf("ctr run --rm true: cold %v; cached %v; runc %v", cold, cached, runc)
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.Logf("load average: %s", load)
	}
}
