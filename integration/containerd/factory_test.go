package containerd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/factory"
)

// factoryBootTimeout bounds a warm VM's boot in the tests (TCG, a loaded
// host).
const factoryBootTimeout = 4 * time.Minute

// factoryProc is a `hull factory serve` the test runs.
type factoryProc struct {
	cmd      *exec.Cmd
	socket   string
	cgParent string
	logPath  string
}

// factoryAssets is the guest image of the factory tests: the hull kernel's
// (faster boots) when HULL_TEST_ASSETS_HULLKERNEL names it.
func factoryAssets() string {
	if dir := os.Getenv("HULL_TEST_ASSETS_HULLKERNEL"); dir != "" {
		return dir
	}
	return env.assetsDir
}

// startFactory configures d's hull for a factory of vmCache warm VMs on a
// private socket and cgroup parent, and starts `hull factory serve`.
func startFactory(t testing.TB, d *daemon, vmCache int) *factoryProc {
	t.Helper()
	f := &factoryProc{
		socket:   filepath.Join(d.dir, "factory", "factory.sock"),
		cgParent: fmt.Sprintf("hull-factory-e2e-%d", os.Getpid()),
		logPath:  filepath.Join(d.dir, "factory.log"),
	}
	d.setHullConfig(t, daemonOptions{assetsDir: factoryAssets(), tables: fmt.Sprintf(
		"[factory]\nvm_cache = %d\nsocket = %q\ncgroup_parent = %q\n", vmCache, f.socket, f.cgParent)})
	logFile, err := os.Create(f.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }()
	f.cmd = exec.Command(filepath.Join(env.binDir, "hull"), "--config", filepath.Join(d.dir, "hull.toml"), "--log-level", "info",
		"factory", "serve", "--shim", filepath.Join(env.shimDir, "containerd-shim-hull-v2"))
	f.cmd.Stdout, f.cmd.Stderr = logFile, logFile
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Cgroups of the factory's own, as a service unit has: a claimed shim
	// must leave them for containerd's.
	own := ownCgroups(t, f.cmd.Process.Pid)
	t.Cleanup(func() {
		e2e.Stop(f.cmd, 30*time.Second)
		for _, d := range own {
			_ = os.Remove(d)
		}
		for _, cg := range cgroupDirs(f.cgParent) {
			_ = os.Remove(cg)
		}
		if t.Failed() {
			b, _ := os.ReadFile(f.logPath)
			t.Logf("factory log:\n%s", b)
		}
	})
	return f
}

// ownCgroups moves pid into cgroups of its own, in the memory and pids
// hierarchies (cgroup v1) or the unified one, and returns their
// directories.
func ownCgroups(t testing.TB, pid int) []string {
	t.Helper()
	var dirs []string
	for _, h := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		d := filepath.Join(h, fmt.Sprintf("hull-factory-e2e-proc-%d", pid))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0); err != nil {
			t.Fatal(err)
		}
		if h == "/sys/fs/cgroup" {
			break // unified: the one hierarchy
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no cgroup hierarchy to put the factory in")
	}
	return dirs
}

// status asks the factory for its status.
func (f *factoryProc) status(t testing.TB) (*api.StatusResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := factory.Dial(ctx, f.socket)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	return c.Status(ctx)
}

// waitReady waits until the factory has a ready warm VM other than those
// in not, and returns its status.
func (f *factoryProc) waitReady(t testing.TB, not ...string) *api.StatusResponse {
	t.Helper()
	deadline := time.Now().Add(factoryBootTimeout)
	for {
		st, err := f.status(t)
		if err == nil {
			for _, v := range st.Vms {
				if v.Ready && !contains(not, v.Id) {
					return st
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warm VM ready after %s: status %v, err %v", factoryBootTimeout, st, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// readyVM is the first ready warm VM of st.
func readyVM(st *api.StatusResponse) *api.WarmVM {
	for _, v := range st.Vms {
		if v.Ready {
			return v
		}
	}
	return nil
}

// cgroupDirs lists the directories of the cgroup parent in every mounted
// hierarchy, the warm VMs' first.
func cgroupDirs(parent string) []string {
	warm, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent, "warm-*"))
	v2, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", parent, "warm-*"))
	top, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	return append(append(append(warm, v2...), top...), filepath.Join("/sys/fs/cgroup", parent))
}

// warmLeftovers lists what of the factory's warm VMs is still there: warm
// state directories, processes naming them, their cgroups, the PIDs given
// (warm shims) still alive.
func warmLeftovers(d *daemon, f *factoryProc, pids ...uint32) []string {
	var left []string
	dirs, _ := filepath.Glob(filepath.Join(d.stateRoot, "warm-*"))
	for _, dir := range dirs {
		left = append(left, "state "+dir)
	}
	for _, l := range d.leftovers() {
		if strings.Contains(l, "warm-") && strings.HasPrefix(l, "process") {
			left = append(left, l)
		}
	}
	cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", f.cgParent, "warm-*"))
	for _, cg := range cgs {
		left = append(left, "cgroup "+cg)
	}
	for _, pid := range pids {
		if alive(int(pid)) {
			left = append(left, fmt.Sprintf("warm shim %d", pid))
		}
	}
	return left
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

// waitNone waits until list returns nothing, failing after limit.
func waitNone(t testing.TB, what string, limit time.Duration, list func() []string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		left := list()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: left after %s:\n  %s", what, limit, strings.Join(left, "\n  "))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestFactory runs containers from the VM factory's cache with containerd
// 2: the pod takes the warm VM (a hit), prints its hostname, exits and
// leaves nothing; the factory refills; a detached pod's shim runs in
// containerd's cgroups and, removed, leaves nothing; killed with SIGKILL,
// the factory's warm VM goes with it.
func TestFactory(t *testing.T) {
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemonWith(t, containerdPath, ctrPath, daemonOptions{assetsDir: factoryAssets()})
	f := startFactory(t, d, 1)

	st := f.waitReady(t)
	first := readyVM(st)
	t.Logf("warm VM %s ready (shim %d) after %.1fs", first.Id, first.Pid, first.AgeSeconds)

	const id = "factory-hit"
	out := d.mustCtr(t, "run", "--rm", "--runtime", runtimeName, imageName, id, "hostname")
	if want := id + "@default\n"; out != want {
		t.Errorf("hostname: got %q, want %q", out, want)
	}
	st, err := f.status(t)
	if err != nil {
		t.Fatal(err)
	}
	if st.Hits != 1 || st.Misses != 0 {
		t.Errorf("after the run: %d hits, %d misses, want 1 and 0", st.Hits, st.Misses)
	}
	if !strings.Contains(d.log.String(), `start=adopted`) {
		t.Errorf("the shim's log does not say the sandbox was adopted")
	}
	// hull monitor serves the factory's series.
	metrics := scrapeMonitor(t, filepath.Join(d.dir, "hull.toml"))
	for _, want := range []string{"hull_factory_up 1", `hull_factory_claims_total{result="hit"} 1`, `hull_factory_claims_total{result="miss"} 0`, "hull_factory_vms_wanted 1"} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("hull monitor's metrics lack %q", want)
		}
	}
	// The pod is gone with everything it had, the warm VM it took with it.
	waitNone(t, "the pod run from the factory", 30*time.Second, func() []string {
		var left []string
		factoryProcess := fmt.Sprintf("process %d:", f.cmd.Process.Pid) // its configuration sits beside the state root
		for _, l := range d.leftovers() {
			if !strings.Contains(l, "warm-") && !strings.HasPrefix(l, factoryProcess) {
				left = append(left, l)
			}
		}
		if alive(int(first.Pid)) {
			left = append(left, fmt.Sprintf("claimed shim %d", first.Pid))
		}
		if dirs, _ := filepath.Glob(filepath.Join(d.stateRoot, first.Id)); len(dirs) > 0 {
			left = append(left, "state "+dirs[0])
		}
		return left
	})

	// The factory refilled.
	st = f.waitReady(t, first.Id)
	second := readyVM(st)
	t.Logf("refilled: warm VM %s (shim %d)", second.Id, second.Pid)

	// A running pod from the factory: its shim left the factory's cgroups
	// for containerd's, as a cold shim is born there; removed, it leaves
	// nothing.
	const detached = "factory-detached"
	d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, detached, "sleep", "600")
	if st, err := f.status(t); err != nil || st.Hits != 2 {
		t.Errorf("after the detached run: status %v (%v), want 2 hits", st, err)
	}
	shimCgroup, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", second.Pid))
	containerdCgroup, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", d.cmd.Process.Pid))
	if len(shimCgroup) == 0 || string(shimCgroup) != string(containerdCgroup) {
		t.Errorf("the claimed shim's cgroups:\n%s\ncontainerd's:\n%s", shimCgroup, containerdCgroup)
	}
	// Its command line is the pod server's, not the warm shim's.
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", second.Pid)); !strings.Contains(string(b), "\x00-id\x00"+detached+"\x00") || strings.Contains(string(b), second.Id) {
		t.Errorf("the claimed shim's command line: %q, want the server's for %s", strings.ReplaceAll(string(b), "\x00", " "), detached)
	}
	d.mustCtr(t, "task", "kill", "-s", "KILL", detached)
	waitStatus(t, d, detached, "STOPPED")
	d.mustCtr(t, "task", "delete", detached)
	d.mustCtr(t, "container", "delete", detached)
	waitNone(t, "the detached pod run from the factory", 30*time.Second, func() []string {
		var left []string
		factoryProcess := fmt.Sprintf("process %d:", f.cmd.Process.Pid)
		for _, l := range d.leftovers() {
			if !strings.Contains(l, "warm-") && !strings.HasPrefix(l, factoryProcess) {
				left = append(left, l)
			}
		}
		if alive(int(second.Pid)) {
			left = append(left, fmt.Sprintf("claimed shim %d", second.Pid))
		}
		return left
	})
	st = f.waitReady(t, first.Id, second.Id)
	third := readyVM(st)

	// SIGKILL: the warm shim sees its lifeline end and stops its VM.
	if err := f.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = f.cmd.Wait()
	waitNone(t, "the killed factory's warm VM", 60*time.Second, func() []string {
		return warmLeftovers(d, f, third.Pid)
	})
	d.checkClean(t)
}

// scrapeMonitor runs `hull monitor` with the configuration at config on a
// free loopback port, and returns its first successful /metrics answer.
func scrapeMonitor(t *testing.T, config string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	cmd := exec.Command(filepath.Join(env.binDir, "hull"), "--config", config, "monitor", "--listen", addr)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	client := &http.Client{Timeout: 10 * time.Second}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			continue
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			return string(body)
		}
	}
	t.Fatalf("hull monitor served no metrics within 30s; its output:\n%s", out.String())
	return ""
}
