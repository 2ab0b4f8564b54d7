package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// BaselineRootfsAssetsEnv names an optional second rootfs image directory
// (another build of `make image-rootfs`, e.g. of an older agent) that
// BenchmarkIdlePods measures beside HULL_TEST_ASSETS_ROOTFS in the same
// run, as "baseline".
const BaselineRootfsAssetsEnv = "HULL_BENCH_BASELINE_ROOTFS"

// PodSandboxBenchEnv, set to anything, gives each of BenchmarkIdlePods'
// pods a pod sandbox container (the agent's light pause process) before
// its container, as a pod started through CRI has.
const PodSandboxBenchEnv = "HULL_BENCH_POD_SANDBOX"

// BenchmarkIdlePods is the memory goal's headline: templatePods idle pods
// at once, each started as a pod's shim starts it (sandbox.Start) with the
// default configuration and the default guest image (the hull kernel's
// erofs root image, HULL_TEST_ASSETS_ROOTFS; the agent over serial where
// vsock is unavailable), each with one busybox sleep container whose root
// is on virtio-fs, idleSettle after the last container started. Per pod,
// the PSS of its QEMU and virtiofsd processes split by mapping (guest RAM,
// TCG's translation cache, QEMU's other anonymous memory, the image files,
// QEMU's binary and libraries, virtiofsd); it reports the median pod's
// total and each part's median, and logs each part's range. One round of
// templatePods pods per iteration; the figures are the medians of the
// rounds' medians.
//
// With HULL_BENCH_BASELINE_ROOTFS set, each round also measures
// templatePods pods of that image ("baseline"), the order alternating
// round by round, and reports "baseline-*" and "default/baseline-pss".
// When an image has a debug shell (hull image build --debug-shell) its
// pods start with agent.debug_console on and the benchmark logs, from
// inside one pod's guest, /proc/meminfo and each guest process's memory:
// where the guest RAM goes (the default images have no debug shell).
// With HULL_BENCH_POD_SANDBOX set, each pod has a pod sandbox container
// too: the benchmark reports the median time of its create and start
// ("-pod-sandbox-start-ms", the pods one after another, every VM up) and,
// with a debug shell, logs the waiting stage's memory in the guests.
func BenchmarkIdlePods(b *testing.B) {
	dir, m := rootfsAssets(b)
	kinds := []idlePodImage{{"default", dir, m.DebugShell != nil}}
	if base := os.Getenv(BaselineRootfsAssetsEnv); base != "" {
		bm, err := guestimage.ReadManifest(base)
		if err != nil {
			b.Fatalf("%s: %v", BaselineRootfsAssetsEnv, err)
		}
		if bm.ImageKind() != guestimage.KindRootfs {
			b.Fatalf("%s=%s is not a rootfs image: kind %q", BaselineRootfsAssetsEnv, base, bm.ImageKind())
		}
		kinds = append(kinds, idlePodImage{"baseline", base, bm.DebugShell != nil})
	}
	bundle, spec := busyboxBundle(b, "sleep", "100000")
	rounds := map[string][]podSplits{}
	podSandboxStarts := map[string][]time.Duration{}
	for i := 0; b.Loop(); i++ {
		for k := range kinds {
			kind := kinds[(i+k)%len(kinds)]
			s, starts := measureIdlePods(b, kind, fmt.Sprintf("ip%d-%s", i, kind.name), bundle, spec)
			b.Logf("round %d, %s: %s", i, kind.name, s)
			if len(starts) > 0 {
				b.Logf("round %d, %s: pod sandbox create and start median %d ms (%d to %d)", i, kind.name,
					medianDuration(starts).Milliseconds(), slices.Min(starts).Milliseconds(), slices.Max(starts).Milliseconds())
			}
			rounds[kind.name] = append(rounds[kind.name], s)
			podSandboxStarts[kind.name] = append(podSandboxStarts[kind.name], starts...)
		}
	}
	for _, kind := range kinds {
		if ts := podSandboxStarts[kind.name]; len(ts) > 0 {
			b.ReportMetric(float64(medianDuration(ts).Milliseconds()), kind.name+"-pod-sandbox-start-ms")
		}
	}
	for _, kind := range kinds {
		rs := rounds[kind.name]
		pick := func(f func(podSplits) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return medianF(v)
		}
		for _, p := range podSplitParts {
			b.ReportMetric(pick(func(s podSplits) float64 { return s.median(p.f) }), kind.name+"-"+p.metric)
		}
	}
	if len(kinds) > 1 {
		med := func(name string) float64 {
			v := make([]float64, len(rounds[name]))
			for i, r := range rounds[name] {
				v[i] = r.median(pssSplit.totalMiB)
			}
			return medianF(v)
		}
		if base := med("baseline"); base > 0 {
			b.ReportMetric(med("default")/base, "default/baseline-pss")
		}
	}
	e2e.LogLoad(b)
}

// idlePodImage is a guest image BenchmarkIdlePods runs pods of.
type idlePodImage struct {
	name string
	dir  string
	// debugShell is whether the image has a debug shell: its pods get the
	// debug console, through which the benchmark reads the guest's memory.
	debugShell bool
}

// podSplits is the PSS split of each of a round's pods.
type podSplits []pssSplit

// median is the median over the pods of f.
func (s podSplits) median(f func(pssSplit) float64) float64 {
	v := make([]float64, len(s))
	for i, p := range s {
		v[i] = f(p)
	}
	return medianF(v)
}

// podSplitParts names the parts of a pod's PSS that BenchmarkIdlePods
// reports.
var podSplitParts = []struct {
	name, metric string
	f            func(pssSplit) float64
}{
	{"PSS per pod", "pss-per-pod-MiB", pssSplit.totalMiB},
	{"guest RAM", "guest-ram-MiB", func(s pssSplit) float64 { return mib(s.guestRAM) }},
	{"TCG cache", "tcg-MiB", func(s pssSplit) float64 { return mib(s.tcg) }},
	{"QEMU other anonymous", "qemu-anon-MiB", func(s pssSplit) float64 { return mib(s.qemuAnon) }},
	{"image files", "image-MiB", func(s pssSplit) float64 { return mib(s.image) }},
	{"QEMU binary and libraries", "qemu-files-MiB", func(s pssSplit) float64 { return mib(s.qemuFiles) }},
	{"virtiofsd", "virtiofsd-MiB", func(s pssSplit) float64 { return mib(s.virtiofsd) }},
}

func (s podSplits) String() string {
	parts := make([]string, 0, len(podSplitParts))
	for _, p := range podSplitParts {
		v := make([]float64, len(s))
		for i, pod := range s {
			v[i] = p.f(pod)
		}
		parts = append(parts, fmt.Sprintf("%s median %.1f MiB (%.1f to %.1f)", p.name, medianF(v), slices.Min(v), slices.Max(v)))
	}
	return fmt.Sprintf("%d pods: %s", len(s), strings.Join(parts, "; "))
}

// measureIdlePods starts templatePods pods of image at once, each with a
// container of bundle, lets them idle for idleSettle and returns each
// pod's PSS split and the times of its pod sandbox container's create and
// start (none without one); it stops the pods.
func measureIdlePods(b *testing.B, image idlePodImage, prefix, bundle string, spec *specs.Spec) (podSplits, []time.Duration) {
	b.Helper()
	c := imageBenchConfig(b, imageKind{"hull-rootfs", image.dir, guestimage.KindRootfs})
	c.Agent.DebugConsole = image.debugShell
	pods := startIdlePods(b, podKind{name: image.name, c: c, podSandbox: os.Getenv(PodSandboxBenchEnv) != ""}, prefix, templatePods, bundle, spec)
	defer pods.stop()
	time.Sleep(idleSettle)
	var s podSplits
	for _, sb := range pods.sbs {
		var p pssSplit
		qemu := 0
		for _, pid := range processesMentioning(sb.StateDir() + string(os.PathSeparator)) {
			switch {
			case pid == sb.VM().Describe().PID:
				qemu++
				addQEMUSmaps(&p, pid, c.Image.AssetsDir)
			case processName(pid) == "virtiofsd":
				_, pss := e2e.SmapsRollup(pid)
				p.virtiofsd += pss
			default:
				b.Fatalf("%s: process %d (%s) names its state directory: neither its QEMU nor a virtiofsd", sb.ID(), pid, processName(pid))
			}
		}
		if qemu != 1 {
			b.Fatalf("%s: %d QEMU processes, want 1", sb.ID(), qemu)
		}
		s = append(s, p)
	}
	if image.debugShell {
		var used, agent, pauseAnon, pausePss []float64
		for i, sb := range pods.sbs {
			out, err := guestMemory(withTimeout(b, 5*time.Minute), sb)
			if err != nil {
				b.Fatalf("%s: reading the guest's memory: %v", sb.ID(), err)
			}
			if i == 0 {
				b.Logf("%s: pod %s, inside the guest:\n%s", image.name, sb.ID(), out)
			}
			g := parseGuestMemory(out)
			used = append(used, g.usedKiB/1024)
			agent = append(agent, g.agentPssKiB/1024)
			if g.pause {
				pauseAnon, pausePss = append(pauseAnon, g.pauseAnonKiB), append(pausePss, g.pausePssKiB)
			}
		}
		b.Logf("%s: inside the guests: MemTotal less MemFree median %.1f MiB (%.1f to %.1f); the agent's PSS median %.1f MiB (%.1f to %.1f)",
			image.name, medianF(used), slices.Min(used), slices.Max(used), medianF(agent), slices.Min(agent), slices.Max(agent))
		if len(pauseAnon) > 0 {
			b.Logf("%s: inside the guests: the pod sandbox's waiting stage (pause), %d of them: anonymous PSS median %.0f KiB (%.0f to %.0f), PSS median %.0f KiB (%.0f to %.0f)",
				image.name, len(pauseAnon), medianF(pauseAnon), slices.Min(pauseAnon), slices.Max(pauseAnon), medianF(pausePss), slices.Min(pausePss), slices.Max(pausePss))
		}
	}
	return s, pods.podSandboxStarts
}

// guestMemoryScript is what guestMemory types into a guest's debug shell:
// /proc/meminfo, each process's memory (smaps_rollup; kernel threads have
// none) and the tmpfs mounts' use. (The hull kernel's SLOB allocator has
// no /proc/slabinfo.) Its markers are printed by the shell's arithmetic,
// so the terminal's echo of the script does not match them.
const guestMemoryScript = `echo guestmem-begin-$((6*7))
cat /proc/meminfo
for p in /proc/[0-9]*; do r=$(grep -E '^(Rss|Pss|Pss_Anon|Pss_File|Pss_Shmem):' $p/smaps_rollup 2>/dev/null | tr -s ' ' | tr '\n' ' '); [ -n "$r" ] && echo "pid ${p#/proc/} $(cat $p/comm) ppid $(cut -d' ' -f4 $p/stat) $r"; done
df -k -t tmpfs 2>/dev/null || df -k
echo guestmem-end-$((6*7))
exit
`

// guestFigures are figures of guestMemoryScript's output, in KiB.
type guestFigures struct {
	// usedKiB is MemTotal less MemFree.
	usedKiB float64
	// agentPssKiB is PID 1's PSS.
	agentPssKiB float64
	// pause is whether a process named pause (a pod sandbox's waiting
	// stage) was found; pausePssKiB and pauseAnonKiB are its PSS and its
	// anonymous share of it.
	pause                     bool
	pausePssKiB, pauseAnonKiB float64
}

// parseGuestMemory picks guestFigures out of guestMemoryScript's output.
func parseGuestMemory(out string) guestFigures {
	var g guestFigures
	var total, free float64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "MemTotal:":
			total, _ = strconv.ParseFloat(f[1], 64)
		case len(f) >= 2 && f[0] == "MemFree:":
			free, _ = strconv.ParseFloat(f[1], 64)
		case len(f) >= 10 && f[0] == "pid" && f[1] == "1" && f[8] == "Pss:":
			g.agentPssKiB, _ = strconv.ParseFloat(f[9], 64)
		case len(f) >= 13 && f[0] == "pid" && f[2] == "pause" && f[8] == "Pss:" && f[11] == "Pss_Anon:":
			g.pause = true
			g.pausePssKiB, _ = strconv.ParseFloat(f[9], 64)
			g.pauseAnonKiB, _ = strconv.ParseFloat(f[12], 64)
		}
	}
	g.usedKiB = total - free
	return g
}

// guestMemory reads, through the debug console of sb (which its image's
// debug shell and agent.debug_console give), what guestMemoryScript
// prints, less the terminal's echo of the script.
func guestMemory(ctx context.Context, sb *sandbox.Sandbox) (string, error) {
	conn, _, err := sandbox.DialConsole(ctx, sb.StateDir(), sandbox.ConsoleRequest{Width: 4096, Height: 50})
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if _, err := io.WriteString(conn, guestMemoryScript); err != nil {
		return "", err
	}
	echo := strings.Split(strings.TrimSpace(guestMemoryScript), "\n")
	var out strings.Builder
	in := false
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case line == "guestmem-begin-42":
			in = true
		case line == "guestmem-end-42":
			return out.String(), nil
		case in && !slices.ContainsFunc(echo, func(e string) bool { return strings.HasSuffix(line, e) }):
			out.WriteString(line + "\n")
		}
	}
	return out.String(), fmt.Errorf("the console ended before the script's end: %w", sc.Err())
}
