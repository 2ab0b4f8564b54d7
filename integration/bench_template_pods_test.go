package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/storage"
)

// templatePods is how many idle pods of each kind BenchmarkTemplatePods
// runs at once for its memory figures.
const templatePods = 10

// podKind is a way BenchmarkTemplatePods starts a pod's sandbox.
type podKind struct {
	name string
	c    *config.Config
	// restored is whether its sandboxes must start from the template.
	restored bool
	// diskRoot gives each pod's container a root of its own on a disk
	// (an ext4 image of the bundle's root, as containerd's blockfile
	// snapshotter keeps it): what a pod without virtio-fs needs.
	diskRoot bool
	// podSandbox gives each pod a pod sandbox container (the agent's
	// light pause process) before its container, as a CRI pod has.
	podSandbox bool
}

// BenchmarkTemplatePods compares pods whose VM boots ("cold") with pods
// whose VM is restored from a VM template (factory.template = true,
// template_memory = "private", the template made once by
// sandbox.CreateTemplate, what `hull factory template create` runs), as a
// pod's shim starts them (sandbox.Start with the configuration's template;
// the hull kernel's image, q35, serial agent, 1 vCPU, 512 MiB, free page
// reporting on, no network), each pod with one busybox container that
// sleeps (its root over virtio-fs):
//
//   - "-start-ms": the sandbox's start until that container runs (create
//     and start returned), one pod of each kind per round, the order
//     alternating round by round; medians over -benchtime Nx rounds;
//   - "-pss-total-MiB" and "-pss-per-pod-MiB": with templatePods idle pods
//     of one kind at once, 5 s after their containers started, the PSS
//     (/proc/PID/smaps_rollup) of each pod's QEMU and virtiofsd processes:
//     their sum over the pods, and the median pod (measured once per kind,
//     after the rounds); "-cgroup-total-MiB" is the memory charged to
//     the pods' cgroups then, summed, which beside the processes' pages
//     counts the page cache of a restored VM's RAM copy that its guest
//     has not touched (mapped by no process, so outside PSS);
//
// "template/cold-*" are the ratios. Every template pod must have restored
// and every cold pod booted, or the benchmark fails. A pod with
// template_memory = "shared" must be refused (ErrNotImplemented: virtio-fs
// needs the guest RAM mapped shared); the benchmark logs the refusal.
// BenchmarkTemplatePodsShared measures shared template memory for pods
// without virtio-fs.
func BenchmarkTemplatePods(b *testing.B) {
	cold := templateBenchConfig(b)
	tpl := *cold
	tpl.Factory.Template = true
	tpl.Factory.TemplateMemory = "private"
	t0 := time.Now()
	key := createPodTemplate(b, withTimeout(b, 5*time.Minute), &tpl, "tpl-create")
	b.Logf("template %s created in %v", key, time.Since(t0).Round(time.Millisecond))

	shared := tpl
	shared.Factory.TemplateMemory = "shared"
	switch sbs, err := startSandboxes(&shared, "tpl-shared", 1); {
	case err == nil:
		stopSandboxes(sbs)
		b.Fatal("a pod sandbox with template_memory = \"shared\" started: its virtio-fs cannot work on RAM mapped copy-on-write")
	case !errdefs.IsNotImplemented(err):
		b.Fatalf("a pod sandbox with template_memory = \"shared\": %v, want a not-implemented error", err)
	default:
		b.Logf("template_memory = \"shared\": not supported for pods, as designed: %v", err)
	}

	bundle, spec := busyboxBundle(b, "sleep", "100000")
	kinds := []podKind{{name: "cold", c: cold}, {name: "template", c: &tpl, restored: true}}
	starts := map[string][]time.Duration{}
	for i := 0; b.Loop(); i++ {
		for k := range kinds {
			kind := kinds[(i+k)%len(kinds)]
			t0 := time.Now()
			pods := startIdlePods(b, kind, fmt.Sprintf("tp-%s-%d", kind.name, i), 1, bundle, spec)
			starts[kind.name] = append(starts[kind.name], time.Since(t0))
			pods.stop()
		}
	}

	mems := map[string]podMem{}
	for _, kind := range kinds {
		mems[kind.name] = idleMemory(b, kind, bundle, spec)
	}
	for _, kind := range kinds {
		ts := starts[kind.name]
		b.ReportMetric(float64(medianDuration(ts).Milliseconds()), kind.name+"-start-ms")
		b.Logf("%s: pod start median %v, range %v to %v, runs %v", kind.name, medianDuration(ts).Round(time.Millisecond),
			slices.Min(ts).Round(time.Millisecond), slices.Max(ts).Round(time.Millisecond), ts)
	}
	if c := medianDuration(starts["cold"]); c > 0 {
		b.ReportMetric(medianDuration(starts["template"]).Seconds()/c.Seconds(), "template/cold-start")
	}
	reportPodMem(b, mems, "cold", "template", "template/cold")
	e2e.LogLoad(b)
}

// templateBenchConfig is the cold pod configuration of the template
// benchmarks: the hull kernel's image, the serial agent, a template
// directory of its own in the state directory.
func templateBenchConfig(b *testing.B) *config.Config {
	b.Helper()
	c := testConfig(b)
	c.Agent.Transport = "serial"
	c.Image.AssetsDir, _ = hullKernelAssets(b)
	// A first container under TCG on a loaded host can take longer than
	// the tests' 20 s per agent call.
	c.Agent.CallTimeout = config.Duration{Duration: 90 * time.Second}
	tdir := filepath.Join(c.Runtime.StateDir, "templates")
	if err := os.Mkdir(tdir, 0o700); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(tdir) })
	c.Factory.TemplateDir = tdir
	return c
}

// reportPodMem reports the memory figures of the kinds base and other in
// mems (idleMemory's), and other's over base's as ratio+"-pss" and
// ratio+"-cgroup".
func reportPodMem(b *testing.B, mems map[string]podMem, base, other, ratio string) {
	b.Helper()
	for _, name := range []string{base, other} {
		b.ReportMetric(mems[name].total, name+"-pss-total-MiB")
		b.ReportMetric(mems[name].median, name+"-pss-per-pod-MiB")
		b.ReportMetric(mems[name].charged, name+"-cgroup-total-MiB")
	}
	if c := mems[base].total; c > 0 {
		b.ReportMetric(mems[other].total/c, ratio+"-pss")
	}
	if c := mems[base].charged; c > 0 {
		b.ReportMetric(mems[other].charged/c, ratio+"-cgroup")
	}
}

// idlePods are sandboxes, each with a running container.
type idlePods struct {
	sbs  []*sandbox.Sandbox
	ctrs []*sandbox.Container
	// podSandboxStarts are the times of the pod sandbox containers'
	// create and start, one a pod, when the pods have them.
	podSandboxStarts []time.Duration
}

// stop deletes the containers and stops the sandboxes.
func (p *idlePods) stop() {
	for _, ctr := range p.ctrs {
		_ = ctr.Delete(context.Background(), true)
	}
	stopSandboxes(p.sbs)
}

// startIdlePods starts n sandboxes of kind at once (the boot slots queue
// the boots), checks that each started the kind's way, and starts in each a
// container of the bundle (which must keep running); it returns once all
// containers run. The pods are the caller's to stop; on failure they are
// stopped.
func startIdlePods(b *testing.B, kind podKind, prefix string, n int, bundle string, spec *specs.Spec) *idlePods {
	b.Helper()
	sbs, err := startSandboxes(kind.c, prefix, n)
	if err != nil {
		b.Fatalf("%s: %v", kind.name, err)
	}
	pods := &idlePods{sbs: sbs}
	fail := func(format string, args ...any) {
		b.Helper()
		pods.stop()
		b.Fatalf(format, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, sb := range sbs {
		if sb.Restored() != kind.restored {
			fail("%s: sandbox %s restored from the template: %v, want %v", kind.name, sb.ID(), sb.Restored(), kind.restored)
		}
		if kind.podSandbox {
			t0 := time.Now()
			pause, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "pause", Bundle: bundle, Spec: spec, PodSandbox: true})
			if err != nil {
				fail("%s: creating the pod sandbox container in %s: %v", kind.name, sb.ID(), err)
			}
			pods.ctrs = append(pods.ctrs, pause)
			if err := pause.Start(ctx); err != nil {
				fail("%s: starting the pod sandbox container in %s: %v", kind.name, sb.ID(), err)
			}
			pods.podSandboxStarts = append(pods.podSandboxStarts, time.Since(t0))
		}
		cc := sandbox.ContainerConfig{ID: "idle", Bundle: bundle, Spec: spec}
		if kind.diskRoot {
			cc.Rootfs = []storage.Mount{{Type: "ext4", Source: ext4Image(b, bundle), Options: []string{"loop", "rw"}}}
		}
		ctr, err := sb.CreateContainer(ctx, cc)
		if err != nil {
			fail("%s: creating the container in %s: %v", kind.name, sb.ID(), err)
		}
		pods.ctrs = append(pods.ctrs, ctr)
		if err := ctr.Start(ctx); err != nil {
			fail("%s: starting the container in %s: %v", kind.name, sb.ID(), err)
		}
	}
	return pods
}

// qemuPSSSplit splits the PSS of sb's QEMU (/proc/PID/smaps) into guest
// RAM (its memfd, or the RAM file in the sandbox's state directory of a VM
// restored from a template), anonymous memory (QEMU's heap and, under TCG,
// its translated code) and file mappings (QEMU, its libraries, the guest
// kernel).
func qemuPSSSplit(sb *sandbox.Sandbox) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", sb.VM().Describe().PID))
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	var ram, anon, file uint64
	var into *uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			path := ""
			if len(fields) >= 6 {
				path = fields[5]
			}
			switch {
			case strings.HasPrefix(path, "/memfd:") || strings.HasPrefix(path, sb.StateDir()+"/"):
				into = &ram
			case path == "" || strings.HasPrefix(path, "["):
				into = &anon
			default:
				into = &file
			}
			continue
		}
		if into != nil && len(fields) >= 2 && fields[0] == "Pss:" {
			n, _ := strconv.ParseUint(fields[1], 10, 64)
			*into += n
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	mib := func(kib uint64) float64 { return float64(kib) / 1024 }
	return fmt.Sprintf("PSS guest RAM %.1f MiB, anonymous (heap, TCG's translated code) %.1f MiB, files %.1f MiB", mib(ram), mib(anon), mib(file)), nil
}

// processName is the command name of process pid (/proc/PID/comm).
func processName(pid int) string {
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(comm))
}

func formatMiB(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(parts, " ")
}

// podMem is the memory of templatePods idle pods of one kind, in MiB.
type podMem struct{ total, median, lo, hi, charged float64 }

// idleMemory starts templatePods idle pods of kind at once and measures,
// 5 s after their containers started, the PSS of each pod's host
// processes (QEMU, and virtiofsd when it has one) and the memory charged
// to the pods' cgroups.
func idleMemory(b *testing.B, kind podKind, bundle string, spec *specs.Spec) podMem {
	b.Helper()
	pods := startIdlePods(b, kind, "tm-"+kind.name, templatePods, bundle, spec)
	time.Sleep(5 * time.Second) // idle: the guests settle after the containers' start
	var per []float64
	if split, err := qemuPSSSplit(pods.sbs[0]); err == nil {
		b.Logf("%s: QEMU of pod %s: %s", kind.name, pods.sbs[0].ID(), split)
	} else {
		b.Logf("%s: QEMU of pod %s: %v", kind.name, pods.sbs[0].ID(), err)
	}
	// QEMU, and with virtio-fs virtiofsd: one process, or two with -o
	// sandbox=namespace (a parent that waits for the child that serves).
	maxFS := 2
	if kind.c.Runtime.SharedFS == config.SharedFSNone {
		maxFS = 0
	}
	var fsPer []float64
	for _, sb := range pods.sbs {
		pids := processesMentioning(sb.StateDir() + string(os.PathSeparator))
		var kib, fsKiB uint64
		qemu, fs := 0, 0
		for _, pid := range pids {
			_, pss := e2e.SmapsRollup(pid)
			kib += pss
			switch {
			case pid == sb.VM().Describe().PID:
				qemu++
			case processName(pid) == "virtiofsd":
				fs++
				fsKiB += pss
			}
		}
		if qemu != 1 || fs > maxFS || (maxFS > 0) != (fs > 0) || qemu+fs != len(pids) {
			pods.stop()
			b.Fatalf("%s: host processes naming its state directory: %d, of which QEMU %d and virtiofsd %d; want QEMU and at most %d virtiofsd (none without virtio-fs)",
				sb.ID(), len(pids), qemu, fs, maxFS)
		}
		per = append(per, float64(kib)/1024)
		fsPer = append(fsPer, float64(fsKiB)/1024)
	}
	if maxFS > 0 {
		b.Logf("%s: virtiofsd PSS per pod, median %.1f MiB", kind.name, medianF(fsPer))
	}
	// The same processes (the config's state root holds only these pods
	// now), split as BenchmarkIdleMemory splits them.
	b.Logf("%s: per pod, mean: %s", kind.name, sandboxPSS(kind.c).per(templatePods))
	var m podMem
	for _, sb := range pods.sbs {
		u, err := sb.HostUsage()
		if err != nil {
			pods.stop()
			b.Fatalf("%s: the memory charged to its cgroup: %v", sb.ID(), err)
		}
		m.charged += float64(u.MemoryBytes) / (1 << 20)
	}
	pods.stop()
	for _, p := range per {
		m.total += p
	}
	m.median, m.lo, m.hi = medianF(per), slices.Min(per), slices.Max(per)
	b.Logf("%s: %d idle pods, PSS (QEMU + virtiofsd) %.1f MiB in all, per pod median %.1f MiB (%.1f to %.1f): %s; charged to their cgroups %.1f MiB in all",
		kind.name, templatePods, m.total, m.median, m.lo, m.hi, formatMiB(per), m.charged)
	return m
}

// BenchmarkTemplatePodsShared is BenchmarkTemplatePods' memory figures for
// pods without virtio-fs (runtime.shared_fs = "none"), where
// template_memory = "shared" works: templatePods idle pods restored from a
// template whose RAM file they map copy-on-write ("shared"), against
// templatePods cold pods of the same configuration ("cold-nofs"; both
// with free page reporting off, which shared clones need), each pod's
// busybox sleep container on a disk root of its own (an ext4 image,
// hot-added as virtio-blk). It reports each kind's PSS of QEMU (the only
// host process of such a pod) in all and per pod, the memory charged to
// the pods' cgroups, and "shared/cold-pss" and "shared/cold-cgroup". The
// PSS of the shared kind counts each page of the template file that n
// clones map once in all (1/n in each): the host's real cost. Every
// shared pod must have restored and every cold pod booted. One measure
// per kind, whatever -benchtime says.
func BenchmarkTemplatePodsShared(b *testing.B) {
	cold := templateBenchConfig(b)
	cold.Runtime.SharedFS = config.SharedFSNone
	cold.Hypervisor.FreePageReporting = false
	tpl := *cold
	tpl.Factory.Template = true
	tpl.Factory.TemplateMemory = "shared"
	if err := tpl.Validate(); err != nil {
		b.Fatal(err)
	}
	key := createPodTemplate(b, withTimeout(b, 5*time.Minute), &tpl, "tpl-create")
	b.Logf("template %s created", key)
	bundle, spec := busyboxBundle(b, "sleep", "100000")
	kinds := []podKind{{name: "cold-nofs", c: cold, diskRoot: true}, {name: "shared", c: &tpl, restored: true, diskRoot: true}}
	mems := map[string]podMem{}
	for b.Loop() {
		if len(mems) > 0 {
			continue
		}
		for _, kind := range kinds {
			mems[kind.name] = idleMemory(b, kind, bundle, spec)
		}
	}
	reportPodMem(b, mems, "cold-nofs", "shared", "shared/cold")
	e2e.LogLoad(b)
}
