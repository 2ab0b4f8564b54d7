package cri

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// factoryOptions are the daemon options of a daemon whose hull shims claim
// warm VMs from a factory of vmCache VMs (e2e.Factory); startFactory then
// starts it.
func factoryOptions(t testing.TB, vmCache int) (daemonOptions, *e2e.Factory) {
	t.Helper()
	dir, err := os.MkdirTemp(env.workDir, "f")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	f := e2e.NewFactory(e2e.ModeCache, dir, filepath.Base(dir), vmCache)
	return daemonOptions{assetsDir: soakAssets(t), hullConfig: f.Config()}, f
}

// factoryBinaries returns the hull command of HULL_BIN_DIR (make build's);
// the suite's shim directory holds hull-agent beside the shim already
// (e2e.BuildShim), where warm shims find it for their warm-up.
func factoryBinaries(t testing.TB) (hullBin string) {
	t.Helper()
	dir := os.Getenv("HULL_BIN_DIR")
	if dir == "" {
		t.Fatal("HULL_BIN_DIR must name the directory of hull and hull-agent (make build); run `make e2e-cri`")
	}
	return filepath.Join(dir, "hull")
}

// startFactory runs `hull factory serve` with d's hull configuration. The
// test's end stops it (before the daemon stops).
func startFactory(t testing.TB, f *e2e.Factory, d *daemon) {
	t.Helper()
	f.Start(t, factoryBinaries(t), d.hullConfigPath(), filepath.Join(env.binDir, hull.shim))
	d.factory = f
}

// TestCRIFactory runs a kubelet-style pod with containerd 1.6's and 2.x's
// CRI (one daemon each), the
// suite's CNI network and a VM factory of one warm VM: the pod adopts the
// warm VM (a hit, "start=adopted" in the shim's log and hull monitor's
// hull_sandbox_start), its QEMU moves into
// the pod's cgroup, the container runs, exec and the CRI log work, and the
// host reaches the container's server at the pod's IP. Stopped and
// removed, the pod leaves nothing, and the factory refills.
func TestCRIFactory(t *testing.T) {
	for _, version := range []string{"1.6", "2"} {
		t.Run("containerd-"+version, func(t *testing.T) { factoryPod(t, version) })
	}
}

func factoryPod(t *testing.T, version string) {
	hull.need(t)
	opts, f := factoryOptions(t, 1)
	d := startDaemonWith(t, version, opts)
	startFactory(t, f, d)
	warm, _ := f.WaitReady(t)
	t.Logf("warm VM %s ready (shim %d) after %.1fs", warm.Id, warm.Pid, warm.AgeSeconds)

	s := d.session(t, hull)
	from := d.logSize()
	p := s.runPod("warm")
	st, err := f.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Hits != 1 || st.Misses != 0 {
		t.Errorf("after RunPodSandbox: %d hits, %d misses, want 1 and 0", st.Hits, st.Misses)
	}
	if log := d.logSince(from); !strings.Contains(log, "start=adopted") {
		t.Errorf("the shim's log does not say the sandbox was adopted:\n%s", e2e.LastLines(log, 40))
	}

	// hull monitor's sandbox metric says so too.
	metrics, err := httpGet("http://"+startMonitor(t, factoryBinaries(t), d.hullConfigPath())+"/metrics", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var startLine string
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "hull_sandbox_start{") && strings.Contains(l, `pod_uid="`+p.config.Metadata.Uid+`"`) {
			startLine = l
		}
	}
	if !strings.Contains(startLine, `start="adopted"`) || !strings.HasSuffix(startLine, " 1") {
		t.Errorf("hull monitor: the pod's hull_sandbox_start is %q, want start=\"adopted\" 1", startLine)
	}

	// The VMM, the warm VM's QEMU, is in the pod's cgroup now, every
	// thread of it.
	_, info := p.status()
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", info.Pid)); err != nil || !strings.Contains(filepath.Base(exe), "qemu-system") {
		t.Fatalf("the sandbox's pid %d is %q (%v), not the VMM", info.Pid, exe, err)
	}
	want := p.config.Linux.CgroupParent + "/" + p.id
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", info.Pid))
	for _, task := range tasks {
		if got := memoryCgroupOf(t, task); got != want {
			t.Errorf("QEMU %s: memory cgroup %q, want the pod's %q", task, got, want)
		}
	}
	if len(tasks) == 0 {
		t.Errorf("no tasks of QEMU %d", info.Pid)
	}

	servePodWeb(t, p)
	p.stop()
	p.remove()

	// The factory refills; the pod leaves nothing but the new warm VM.
	next, _ := f.WaitReady(t, warm.Id)
	t.Logf("refilled: warm VM %s (shim %d)", next.Id, next.Pid)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		left := s.leftovers() // the factory and its pool left out
		if e2e.Alive(int(warm.Pid)) {
			left = append(left, fmt.Sprintf("claimed shim %d", warm.Pid))
		}
		if cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", f.CgroupParent, warm.Id)); len(cgs) > 0 {
			left = append(left, "warm cgroups "+strings.Join(cgs, " "))
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod from the factory left:\n  %s", strings.Join(left, "\n  "))
		}
	}
}

// BenchmarkCRIFactoryPodStart times the kubelet's start of a one-container
// pod (RunPodSandbox, CreateContainer and StartContainer of a busybox
// container that then runs until stopped) four ways: runc; hull booting the
// pod's VM (cold); hull restoring it from a VM template (factory.template =
// true, private template memory; the template made once by `hull factory
// template create`, untimed); and hull taking a warm VM from a factory of
// one. One pod of each way per round, the order rotating round by round, so
// that load drift hits all four. The factory's VM is ready before its timed
// run, and its refill is waited for after the pod, neither timed, so that no
// run shares the CPUs with a warm VM's boot. Each pod is then stopped and
// removed, untimed, and must leave nothing. Medians over -benchtime Nx
// rounds (make bench uses 5), with ranges and the ratios to runc and to
// cold. Three containerd 1.6 daemons: one plain (cold hull and runc), one
// whose hull configuration names the factory, one with templates on. Each
// hull pod must have started its sandbox the way it names (the shim's
// "sandbox started" line: cold, restored, adopted), and the factory must
// count a hit for each of its pods, or the benchmark fails. The template
// pods' NICs are hot-added after the restore, as the factory pods' are
// after the adoption.
func BenchmarkCRIFactoryPodStart(b *testing.B) {
	hull.need(b)
	plain := startDaemon(b, "1.6")
	opts, f := factoryOptions(b, 1)
	warmDaemon := startDaemonWith(b, "1.6", opts)
	startFactory(b, f, warmDaemon)
	// HULL_BENCH_WAYS (a comma-separated list of the names below) runs
	// some ways only, to study one: the figures of docs/benchmarks.md run
	// them all.
	ways := os.Getenv("HULL_BENCH_WAYS")
	var tplDaemon *daemon
	if ways == "" || slices.Contains(strings.Split(ways, ","), "hull-template") {
		var err error
		if tplDaemon, err = startTemplateDaemon(b, "1.6", ""); err != nil {
			b.Fatal(err)
		}
	}
	modes := []struct {
		name  string
		d     *daemon
		h     handler
		start string // the shim's start field; "" for runc
	}{
		{"runc", plain, runc, ""},
		{"hull-cold", plain, hull, "cold"},
		{"hull-template", tplDaemon, hull, "restored"},
		{"hull-factory", warmDaemon, hull, "adopted"},
	}
	if ways != "" {
		keep := strings.Split(ways, ",")
		modes = slices.DeleteFunc(modes, func(m struct {
			name  string
			d     *daemon
			h     handler
			start string
		}) bool {
			return !slices.Contains(keep, m.name)
		})
		if len(modes) == 0 {
			b.Fatalf("HULL_BENCH_WAYS=%q names no way", ways)
		}
	}
	times := map[string][]time.Duration{}
	var timelines strings.Builder
	var used []string
	// The factory's first warm VM boots beside the template's creation:
	// wait for it, so that no run of the first round shares the CPUs with
	// it (the factory's run then takes it).
	f.WaitReady(b)
	for i := 0; b.Loop(); i++ {
		for k := range modes {
			m := modes[(i+k)%len(modes)]
			if m.name == "hull-factory" {
				b.StopTimer()
				vm, _ := f.WaitReady(b, used...)
				used = append(used, vm.Id)
				b.StartTimer()
			}
			s := m.d.session(b, m.h)
			config := s.podConfig(fmt.Sprintf("start-%s-%d", m.name, i))
			start := time.Now()
			st, err := s.runPodSandbox(config, m.h.name)
			if err != nil {
				s.fail(st.logFrom, "RunPodSandbox (%s): %v", m.name, err)
			}
			p := &pod{s: s, id: st.id, config: config}
			id := p.run(containerConfig("c", untilTerm("true")...))
			elapsed := time.Since(start)
			b.StopTimer()
			if cs := p.containerStatus(id); cs.State != runtime.ContainerState_CONTAINER_RUNNING {
				b.Fatalf("%s: after StartContainer: %v", m.name, cs.State)
			}
			if m.start != "" {
				got, err := e2e.WaitSandboxStart(func() string { return m.d.logSince(st.logFrom) }, st.id+"@k8s.io", 10*time.Second)
				if err != nil {
					b.Fatalf("%s: %v", m.name, err)
				}
				if got != m.start {
					b.Fatalf("round %d, %s: the sandbox started %s, want %s\n%s", i, m.name, got, m.start, e2e.LastLines(m.d.logSince(st.logFrom), 40))
				}
			}
			times[m.name] = append(times[m.name], elapsed)
			if m.start != "" {
				// The daemon's log of the run: the shim's (the start's
				// phases) and the guest's lines.
				fmt.Fprintf(&timelines, "%s round %d: %s at %s\n", m.name, i, elapsed.Round(time.Millisecond), start.UTC().Format("15:04:05.000"))
				for _, l := range strings.Split(m.d.logSince(st.logFrom), "\n") {
					if l != "" {
						fmt.Fprintf(&timelines, "    %s\n", l)
					}
				}
			}
			p.stop()
			p.remove()
			if m.name == "hull-factory" {
				// The refill boots now: it would load the CPUs of the
				// next runs.
				f.WaitReady(b, used...)
			} else {
				s.checkClean()
			}
			b.StartTimer()
		}
	}
	st, err := f.Status()
	if err != nil {
		b.Fatal(err)
	}
	if int(st.Hits) != len(times["hull-factory"]) || st.Misses != 0 {
		b.Fatalf("factory: %d hits, %d misses for %d pods: not every pod took a warm VM", st.Hits, st.Misses, len(times["hull-factory"]))
	}
	for _, m := range modes {
		ts := times[m.name]
		med := medianOf(ts)
		b.ReportMetric(float64(med.Milliseconds()), m.name+"-ms")
		for _, base := range []string{"runc", "hull-cold"} {
			if bm := medianOf(times[base]); m.name != base && bm > 0 && (base != "hull-cold" || m.name != "runc") {
				b.ReportMetric(float64(med)/float64(bm), m.name+"/"+base)
			}
		}
		b.Logf("pod start, %s: median %v, range %v to %v, runs %v", m.name, med.Round(time.Millisecond),
			slices.Min(ts).Round(time.Millisecond), slices.Max(ts).Round(time.Millisecond), ts)
	}
	e2e.LogLoad(b)
	// Each hull run's log, to $HULL_BENCH_TIMELINES when set.
	if path := os.Getenv("HULL_BENCH_TIMELINES"); path != "" {
		if err := os.WriteFile(path, []byte(timelines.String()), 0o600); err != nil {
			b.Error(err)
		}
	}
}

// startTemplateDaemon starts a containerd daemon of version, with the
// soak guest image, whose hull configuration has VM templates on (a
// template directory of its own) after factoryConfig (a [factory] table of
// a VM factory's keys, or empty), and makes the template of its pods' VM
// configuration with `hull factory template create`.
func startTemplateDaemon(t testing.TB, version, factoryConfig string) (*daemon, error) {
	t.Helper()
	dir, err := os.MkdirTemp(env.workDir, "t")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	if factoryConfig == "" {
		factoryConfig = "[factory]\n"
	}
	d := startDaemonWith(t, version, daemonOptions{
		assetsDir:  soakAssets(t),
		hullConfig: factoryConfig + fmt.Sprintf("template = true\ntemplate_dir = %q\n", dir),
	})
	start := time.Now()
	out, err := exec.Command(factoryBinaries(t), "--config", d.hullConfigPath(), "factory", "template", "create").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("hull factory template create: %w\n%s", err, out)
	}
	t.Logf("template created in %.1fs: %s", time.Since(start).Seconds(), strings.TrimSpace(string(out)))
	return d, nil
}
