package containerd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// ctrRunWays are the ways BenchmarkFactoryCtrRun starts `ctr run --rm
// <busybox> true`, and what the hull shim must log as the sandbox's start
// for each ("" for runc).
var ctrRunWays = []struct{ name, start string }{
	{"runc", ""},
	{"cold", "cold"},
	{"template", "restored"},
	{"cached", "adopted"},
}

// BenchmarkFactoryCtrRun times `ctr run --rm <busybox> true` end to end
// four ways on one containerd 1.6 daemon (Debian's, as BenchmarkCtrRun):
// with runc; with hull booting the pod's VM (cold); with hull restoring it
// from a VM template (factory.template = true, private template memory;
// the template is made once by `hull factory template create`, untimed);
// and with hull taking a warm VM from a factory of one (cached). One run of
// each way per round, the order rotating round by round, so that load drift
// hits all four; medians over -benchtime Nx rounds (make bench uses 5),
// with ranges and ratios. Before the cached run the factory's VM is ready,
// and after it the refill is waited for, neither timed, so that no run
// shares the CPU with a warm VM's boot; the other runs find no factory
// socket (it is moved aside). Each hull run must have started its sandbox
// the way it names (the shim's "sandbox started" line: cold, restored,
// adopted) and each cached run must be a factory hit, or the benchmark
// fails.
func BenchmarkFactoryCtrRun(b *testing.B) {
	containerdPath, ctrPath := daemonBinaries(b, "1.6")
	d := startDaemonWith(b, containerdPath, ctrPath, daemonOptions{assetsDir: factoryAssets()})
	f := startFactory(b, d, 1)
	tplConfig := makeCtrTemplate(b, d)
	aside := f.Socket + ".aside"
	times := map[string][]time.Duration{}
	var hits uint64
	var claimed string
	// timelines are each run's start and duration, logged at the end
	// with the hull shims' lines of its sandbox: where its time went.
	var timelines []string
	// The factory's first warm VM boots beside the template's creation:
	// wait for it, so that no run of the first round shares the CPUs with
	// it.
	f.WaitReady(b)
	for i := 0; b.Loop(); i++ {
		for k := range ctrRunWays {
			way := ctrRunWays[(i+k)%len(ctrRunWays)]
			id := fmt.Sprintf("bench-%s-%d", way.name, i)
			args := []string{"run", "--rm", "--runtime", runtimeName}
			switch way.name {
			case "runc":
				args[3] = "io.containerd.runc.v2"
			case "template":
				args = append(args, "--runtime-config-path", tplConfig)
			}
			args = append(args, imageName, id, "true")
			b.StopTimer()
			if way.name == "cached" {
				if _, err := os.Stat(aside); err == nil {
					if err := os.Rename(aside, f.Socket); err != nil {
						b.Fatal(err)
					}
				}
				vm, _ := f.WaitReady(b)
				claimed = vm.Id
			} else if _, err := os.Stat(f.Socket); err == nil {
				if err := os.Rename(f.Socket, aside); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
			start := time.Now()
			d.mustCtr(b, args...)
			took := time.Since(start)
			times[way.name] = append(times[way.name], took)
			b.StopTimer()
			timelines = append(timelines, fmt.Sprintf("%s: ctr run from %s, %v", id, start.UTC().Format("15:04:05.000"), took.Round(time.Millisecond)))
			if way.start != "" {
				got, err := e2e.WaitSandboxStart(d.log.String, id+"@default", 10*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				if got != way.start {
					b.Fatalf("round %d, %s: the sandbox started %s, want %s", i, way.name, got, way.start)
				}
			}
			if way.name == "cached" {
				st, err := f.Status()
				if err != nil {
					b.Fatal(err)
				}
				if st.Hits != hits+1 {
					b.Fatalf("round %d: the cached run was not a hit (%d hits, %d misses)", i, st.Hits, st.Misses)
				}
				hits = st.Hits
				// The refill boots now: wait for it, so that the next
				// run does not share the CPUs with it.
				f.WaitReady(b, claimed)
			}
			b.StartTimer()
		}
	}
	// The socket back in place, so that the factory's stop finds its
	// pool and checks that nothing of it is left.
	if _, err := os.Stat(aside); err == nil {
		if err := os.Rename(aside, f.Socket); err != nil {
			b.Fatal(err)
		}
	}
	reportWays(b, times, "runc", "cold")
	logTimelines(b, d.log.String(), timelines)
	e2e.LogLoad(b)
}

// logTimelines writes each run of timelines (its ID first, then a colon)
// with the lines of log that name it (for hull: the shim's, among them the
// start's steps in the "sandbox started" line's phases and a clone's
// restore, part by part, in "qemu started"): where its time went. They go
// to the file $HULL_BENCH_TIMELINES when set (a benchmark's log keeps its
// first lines only), to the benchmark's log otherwise.
func logTimelines(b *testing.B, log string, timelines []string) {
	b.Helper()
	var out strings.Builder
	lines := strings.Split(log, "\n")
	for _, tl := range timelines {
		id, _, _ := strings.Cut(tl, ":")
		fmt.Fprintln(&out, tl)
		for _, l := range lines {
			if !strings.HasPrefix(id, "bench-runc") && strings.Contains(l, id) {
				fmt.Fprintf(&out, "    %s\n", l)
			}
		}
	}
	if path := os.Getenv("HULL_BENCH_TIMELINES"); path != "" {
		if err := os.WriteFile(path, []byte(out.String()), 0o600); err != nil {
			b.Error(err)
		}
		return
	}
	b.Log(out.String())
}

// makeCtrTemplate writes a hull configuration beside d's with VM templates
// on (in a template directory of its own, no factory) and makes its
// template with `hull factory template create`; it returns the
// configuration's path, for ctr's --runtime-config-path.
func makeCtrTemplate(t testing.TB, d *daemon) string {
	t.Helper()
	dir := filepath.Join(d.dir, "templates")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(d.dir, "hull-template.toml")
	body := d.hullConfig(daemonOptions{assetsDir: factoryAssets(), tables: fmt.Sprintf("[factory]\ntemplate = true\ntemplate_dir = %q\n", dir)})
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(env.binDir, "hull"), "--config", path, "factory", "template", "create").CombinedOutput()
	if err != nil {
		t.Fatalf("hull factory template create: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
	return path
}

// reportWays reports the median of each way's times (ms), and the ratios of
// each way's median to those of the bases.
func reportWays(b *testing.B, times map[string][]time.Duration, bases ...string) {
	b.Helper()
	for _, way := range ctrRunWays {
		ts := times[way.name]
		med := medianOf(ts)
		b.ReportMetric(float64(med.Milliseconds()), way.name+"-ms")
		b.Logf("%s: median %v, range %v to %v, runs %v", way.name, med.Round(time.Millisecond),
			minOf(ts).Round(time.Millisecond), maxOf(ts).Round(time.Millisecond), ts)
	}
	for _, base := range bases {
		bm := medianOf(times[base])
		if bm <= 0 {
			continue
		}
		for _, way := range ctrRunWays {
			if way.name != base && (base != "cold" || way.name != "runc") {
				b.ReportMetric(medianOf(times[way.name]).Seconds()/bm.Seconds(), way.name+"/"+base)
			}
		}
	}
}

func minOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
}

func maxOf(ds []time.Duration) time.Duration {
	m := time.Duration(0)
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
