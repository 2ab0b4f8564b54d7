package cri

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/factory"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// factoryBootTimeout bounds a warm VM's boot (TCG, a loaded host).
const factoryBootTimeout = 4 * time.Minute

// criFactory is a `hull factory serve` beside a CRI daemon, on a private
// socket and cgroup parent, sharing the daemon's hull configuration.
type criFactory struct {
	cmd      *exec.Cmd
	socket   string
	cgParent string
	logPath  string
	// hullBin is the hull command it runs.
	hullBin string
}

// factoryOptions are the daemon options of a daemon whose hull shims claim
// warm VMs from a factory of vmCache VMs; startFactory then starts it.
func factoryOptions(t testing.TB, vmCache int) (daemonOptions, *criFactory) {
	t.Helper()
	dir, err := os.MkdirTemp(env.workDir, "f")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	f := &criFactory{
		socket:   filepath.Join(dir, "factory.sock"),
		cgParent: fmt.Sprintf("hull-cri-factory-%d-%s", os.Getpid(), filepath.Base(dir)),
		logPath:  filepath.Join(dir, "factory.log"),
	}
	return daemonOptions{
		assetsDir:  soakAssets(t),
		hullConfig: fmt.Sprintf("[factory]\nvm_cache = %d\nsocket = %q\ncgroup_parent = %q\n", vmCache, f.socket, f.cgParent),
	}, f
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

// start runs `hull factory serve` with d's hull configuration. The test's
// end stops it (before the daemon stops) and removes its cgroups.
func (f *criFactory) start(t testing.TB, d *daemon) {
	t.Helper()
	logFile, err := os.Create(f.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }() // the factory holds its own copy
	f.hullBin = factoryBinaries(t)
	f.cmd = exec.Command(f.hullBin, "--config", filepath.Join(d.dir, "hull.toml"), "--log-level", "info",
		"factory", "serve", "--shim", filepath.Join(env.binDir, hull.shim))
	f.cmd.Stdout, f.cmd.Stderr = logFile, logFile
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e2e.Stop(f.cmd, 30*time.Second)
		for _, cg := range f.cgroups() {
			_ = os.Remove(cg)
		}
		if t.Failed() {
			b, _ := os.ReadFile(f.logPath)
			t.Logf("factory log:\n%s", b)
		}
	})
}

// cgroups lists the factory's cgroup parent in every hierarchy, the warm
// VMs' cgroups below it first.
func (f *criFactory) cgroups() []string {
	warm, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", f.cgParent, sandbox.WarmIDPrefix+"*"))
	top, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", f.cgParent))
	return append(warm, top...)
}

// status asks the factory for its status.
func (f *criFactory) status() (*api.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := factory.Dial(ctx, f.socket)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }() // one call
	return c.Status(ctx)
}

// waitReady waits for a ready warm VM not in not, and returns it.
func (f *criFactory) waitReady(t testing.TB, not ...string) *api.WarmVM {
	t.Helper()
	deadline := time.Now().Add(factoryBootTimeout)
	for {
		st, err := f.status()
		if err == nil {
			for _, v := range st.Vms {
				if v.Ready && !strings.Contains(strings.Join(not, " "), v.Id) {
					return v
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warm VM ready after %s: status %v, err %v", factoryBootTimeout, st, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
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
	f.start(t, d)
	warm := f.waitReady(t)
	t.Logf("warm VM %s ready (shim %d) after %.1fs", warm.Id, warm.Pid, warm.AgeSeconds)

	s := d.session(t, hull)
	from := d.logSize()
	p := s.runPod("warm")
	st, err := f.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Hits != 1 || st.Misses != 0 {
		t.Errorf("after RunPodSandbox: %d hits, %d misses, want 1 and 0", st.Hits, st.Misses)
	}
	if log := d.logSince(from); !strings.Contains(log, "start=adopted") {
		t.Errorf("the shim's log does not say the sandbox was adopted:\n%s", lastLines(log, 40))
	}

	// hull monitor's sandbox metric says so too.
	metrics, err := httpGet("http://"+startMonitor(t, f.hullBin, filepath.Join(d.dir, "hull.toml"))+"/metrics", time.Minute)
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

	web := containerConfig("web", untilTerm(
		`mkdir -p /www && printf '`+page+`' > /www/index.html; httpd -f -p 8080 -h /www & echo serving on 8080`)...)
	id := p.run(web)
	if cs := p.containerStatus(id); cs.State != runtime.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container: %v, want CONTAINER_RUNNING", cs.State)
	}
	if r := p.execSync(id, 10, "hostname"); r.ExitCode != 0 || string(r.Stdout) != p.config.Hostname+"\n" {
		t.Errorf("ExecSync hostname: exit %d stdout %q stderr %q, want %q", r.ExitCode, r.Stdout, r.Stderr, p.config.Hostname)
	}
	if r := p.execSync(id, 10, "ip", "-4", "-o", "addr", "show"); !strings.Contains(string(r.Stdout), " "+p.ip+"/") {
		t.Errorf("ExecSync ip addr: %q lacks the pod IP %s", r.Stdout, p.ip)
	}
	waitFor(t, 30*time.Second, "the container's output in "+p.logPath(web), func() bool {
		out, _ := criLog(p.logPath(web), "stdout")
		return strings.Contains(out, "serving on 8080\n")
	})
	if body, err := httpGet(fmt.Sprintf("http://%s:8080/", p.ip), time.Minute); err != nil {
		t.Errorf("from the host: %v", err)
	} else if body != page {
		t.Errorf("from the host: got %q, want %q", body, page)
	}

	p.stopContainer(id, 30)
	p.removeContainer(id)
	p.stop()
	p.remove()

	// The factory refills; the pod leaves nothing but the new warm VM.
	next := f.waitReady(t, warm.Id)
	t.Logf("refilled: warm VM %s (shim %d)", next.Id, next.Pid)
	factoryProcess := fmt.Sprintf("process %d:", f.cmd.Process.Pid)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		var left []string
		for _, l := range s.leftovers() {
			if !strings.Contains(l, next.Id) && !strings.Contains(l, sandbox.StateDir(d.stateRoot, next.Id)) && !strings.HasPrefix(l, factoryProcess) {
				left = append(left, l)
			}
		}
		if alive(int(warm.Pid)) {
			left = append(left, fmt.Sprintf("claimed shim %d", warm.Pid))
		}
		if cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", f.cgParent, warm.Id)); len(cgs) > 0 {
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

// alive tells whether pid runs (a zombie does not count).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
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
	f.start(b, warmDaemon)
	tplDaemon, err := startTemplateDaemon(b)
	if err != nil {
		b.Fatal(err)
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
	times := map[string][]time.Duration{}
	var used []string
	for i := 0; b.Loop(); i++ {
		for k := range modes {
			m := modes[(i+k)%len(modes)]
			if m.name == "hull-factory" {
				b.StopTimer()
				used = append(used, f.waitReady(b, used...).Id)
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
				got, err := e2e.SandboxStart(func() string { return m.d.logSince(st.logFrom) }, st.id+"@k8s.io", 10*time.Second)
				if err != nil {
					b.Fatalf("%s: %v", m.name, err)
				}
				if got != m.start {
					b.Fatalf("round %d, %s: the sandbox started %s, want %s\n%s", i, m.name, got, m.start, lastLines(m.d.logSince(st.logFrom), 40))
				}
			}
			times[m.name] = append(times[m.name], elapsed)
			p.stop()
			p.remove()
			if m.name == "hull-factory" {
				// The refill boots now: it would load the CPUs of the
				// next runs.
				f.waitReady(b, used...)
			} else {
				s.checkClean()
			}
			b.StartTimer()
		}
	}
	st, err := f.status()
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
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.Logf("load average: %s", strings.TrimSpace(string(load)))
	}
}

// startTemplateDaemon starts a containerd 1.6 daemon whose hull
// configuration has VM templates on (a template directory of its own), and
// makes the template of its pods' VM configuration with `hull factory
// template create`.
func startTemplateDaemon(t testing.TB) (*daemon, error) {
	t.Helper()
	dir, err := os.MkdirTemp(env.workDir, "t")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	d := startDaemonWith(t, "1.6", daemonOptions{
		assetsDir:  soakAssets(t),
		hullConfig: fmt.Sprintf("[factory]\ntemplate = true\ntemplate_dir = %q\n", dir),
	})
	out, err := exec.Command(factoryBinaries(t), "--config", filepath.Join(d.dir, "hull.toml"), "factory", "template", "create").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("hull factory template create: %w\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
	return d, nil
}
