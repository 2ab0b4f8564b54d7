package containerd

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// factoryAssets is the guest image of the factory tests: the hull kernel's
// (faster boots) when HULL_TEST_ASSETS_HULLKERNEL names it.
func factoryAssets() string {
	if dir := os.Getenv("HULL_TEST_ASSETS_HULLKERNEL"); dir != "" {
		return dir
	}
	return env.assetsDir
}

// startFactory configures d's hull for a factory of vmCache warm VMs on a
// private socket and cgroup parent, and starts `hull factory serve`
// (e2e.Factory); the test's end stops it.
func startFactory(t testing.TB, d *daemon, vmCache int) *e2e.Factory {
	t.Helper()
	f := e2e.NewFactory(e2e.ModeCache, d.dir, filepath.Base(d.dir), vmCache)
	d.setHullConfig(t, daemonOptions{assetsDir: factoryAssets(), tables: f.Config()})
	f.Start(t, filepath.Join(env.binDir, "hull"), d.hullConfigPath(), filepath.Join(env.shimDir, "containerd-shim-hull-v2"))
	d.factory = f
	return f
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
// leaves nothing; the factory refills; a pod whose own runtime
// configuration has no factory boots cold and claims nothing; a detached
// pod's shim runs in containerd's cgroups and, removed, leaves nothing;
// killed with SIGKILL, the factory's warm VM goes with it.
func TestFactory(t *testing.T) {
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemonWith(t, containerdPath, ctrPath, daemonOptions{assetsDir: factoryAssets()})
	f := startFactory(t, d, 1)

	first, _ := f.WaitReady(t)
	t.Logf("warm VM %s ready (shim %d) after %.1fs", first.Id, first.Pid, first.AgeSeconds)

	const id = "factory-hit"
	out := d.mustCtr(t, "run", "--rm", "--runtime", runtimeName, imageName, id, "hostname")
	if want := id + "@default\n"; out != want {
		t.Errorf("hostname: got %q, want %q", out, want)
	}
	st, err := f.Status()
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
		left := d.leftovers() // the factory and its pool left out
		if e2e.Alive(int(first.Pid)) {
			left = append(left, fmt.Sprintf("claimed shim %d", first.Pid))
		}
		if dirs, _ := filepath.Glob(filepath.Join(d.stateRoot, first.Id)); len(dirs) > 0 {
			left = append(left, "state "+dirs[0])
		}
		return left
	})

	// The factory refilled.
	second, _ := f.WaitReady(t, first.Id)
	t.Logf("refilled: warm VM %s (shim %d)", second.Id, second.Pid)

	// A pod whose own configuration (its runtime options) has no factory
	// boots, with a warm VM ready that would fit it: its shim's start
	// claims nothing.
	podRuntimeConfigCold(t, d, f, "factory-own-config")

	// A running pod from the factory: its shim left the factory's cgroups
	// for containerd's, as a cold shim is born there; removed, it leaves
	// nothing.
	const detached = "factory-detached"
	d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, detached, "sleep", "600")
	if st, err := f.Status(); err != nil || st.Hits != 2 {
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
		left := d.leftovers()
		if e2e.Alive(int(second.Pid)) {
			left = append(left, fmt.Sprintf("claimed shim %d", second.Pid))
		}
		return left
	})
	third, _ := f.WaitReady(t, first.Id, second.Id)

	// SIGKILL: the warm shim sees its lifeline end and stops its VM.
	if err := f.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = f.Cmd.Wait()
	waitNone(t, "the killed factory's warm VM", 60*time.Second, func() []string {
		return f.Leftovers(d.stateRoot, []*api.WarmVM{third})
	})
	d.checkClean(t)
}

// podRuntimeConfigCold runs a pod id whose runtime options (ctr
// --runtime-config-path) name a configuration of the same guest image
// without a factory, while f, a factory of d's configuration ($HULL_CONFIG
// of the shims), has a warm VM ready: the pod must boot cold, and the
// factory's hits, misses and warm VMs must not change (the shim's start
// finds the pod's configuration in the options, as the server does).
func podRuntimeConfigCold(t *testing.T, d *daemon, f *e2e.Factory, id string) {
	t.Helper()
	ready, before := f.WaitReady(t)
	cfg := filepath.Join(d.dir, "hull-"+id+".toml")
	if err := os.WriteFile(cfg, []byte(d.hullConfig(daemonOptions{assetsDir: factoryAssets()})), 0o600); err != nil {
		t.Fatal(err)
	}
	from := d.log.Len()
	out := d.mustCtr(t, "run", "--rm", "--runtime", runtimeName, "--runtime-config-path", cfg, imageName, id, "hostname")
	if want := id + "@default\n"; out != want {
		t.Errorf("hostname: got %q, want %q", out, want)
	}
	starts := e2e.SandboxStarts(d.log.Since(from))
	if len(starts) != 1 || starts[0].Start != e2e.ModeCold.Start() {
		t.Errorf("sandbox starts %v, want one cold", starts)
	}
	after, err := f.Status()
	if err != nil {
		t.Fatal(err)
	}
	if after.Hits != before.Hits || after.Misses != before.Misses {
		t.Errorf("factory: %d hits, %d misses before the pod, %d and %d after: its shim claimed a warm VM", before.Hits, before.Misses, after.Hits, after.Misses)
	}
	if !slices.ContainsFunc(after.Vms, func(v *api.WarmVM) bool { return v.Id == ready.Id }) {
		t.Errorf("warm VM %s, ready before the pod, is no longer in the pool: %v", ready.Id, after.Vms)
	}
	if !t.Failed() {
		t.Logf("pod %s booted cold; factory %d hits, %d misses, warm VM %s still ready", id, after.Hits, after.Misses, ready.Id)
	}
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
