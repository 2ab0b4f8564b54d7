package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// imageName is the busybox image's reference.
const imageName = "docker.io/hull/busybox:latest"

// daemonLogTail is how many lines of containerd's log a failed case shows.
const daemonLogTail = 300

// ctrNamespace is the containerd namespace ctr uses.
const ctrNamespace = "default"

// runtimeName is hull's runtime in containerd.
const runtimeName = "io.containerd.hull.v2"

// daemon is an isolated containerd with its own root, state, socket and
// hull state root.
type daemon struct {
	dir       string
	address   string
	ctrPath   string
	stateRoot string
	// containerdPath is the daemon's binary, for restarts.
	containerdPath string
	cmd            *exec.Cmd
	// log is what containerd (and the shims through it) wrote.
	log *e2e.SyncBuffer
	// shimDir holds the shim binary on the daemon's PATH.
	shimDir string
	// factory is the VM factory its pods take VMs from, if any.
	factory *e2e.Factory
}

// hullConfigPath is the hull configuration of the daemon's shims (and of
// its factory).
func (d *daemon) hullConfigPath() string { return filepath.Join(d.dir, "hull.toml") }

// startDaemon starts containerd (CRI off; NRI off, whose socket containerd
// 2.x would otherwise share with every other daemon on the host) with the
// shim on its PATH and a hull configuration whose state root is the
// daemon's own, and imports the busybox image.
func startDaemon(t testing.TB, containerdPath, ctrPath string) *daemon {
	t.Helper()
	return startDaemonWith(t, containerdPath, ctrPath, daemonOptions{})
}

// daemonOptions change the hull configuration of a daemon.
type daemonOptions struct {
	// assetsDir is the guest image; empty means the suite's.
	assetsDir string
	// kernelParams are [hypervisor] kernel_params.
	kernelParams []string
	// hypervisor are more lines of the [hypervisor] table.
	hypervisor []string
	// runtime is added to the [runtime] table.
	runtime string
	// containerd is added to containerd's own configuration (plugin
	// tables).
	containerd string
	// tables are more tables, appended after [runtime].
	tables string
	// shimDir holds the containerd-shim-hull-v2 the daemon runs; empty
	// means the suite's (env.shimDir).
	shimDir string
}

// hullConfig is the hull configuration of the daemon with o.
func (d *daemon) hullConfig(o daemonOptions) string {
	if o.assetsDir == "" {
		o.assetsDir = env.assetsDir
	}
	params := make([]string, len(o.kernelParams))
	for i, p := range o.kernelParams {
		params[i] = strconv.Quote(p)
	}
	return fmt.Sprintf("[hypervisor]\nkernel_params = [%s]\n%s[image]\nassets_dir = %q\n[runtime]\nstate_dir = %q\n%s\n%s",
		strings.Join(params, ", "), strings.Join(append(o.hypervisor, ""), "\n"), o.assetsDir, d.stateRoot, o.runtime, o.tables)
}

// setHullConfig rewrites the hull configuration, which every shim started
// from then on reads.
func (d *daemon) setHullConfig(t testing.TB, o daemonOptions) {
	t.Helper()
	if err := os.WriteFile(d.hullConfigPath(), []byte(d.hullConfig(o)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startDaemonWith is startDaemon with the hull configuration o.
func startDaemonWith(t testing.TB, containerdPath, ctrPath string, o daemonOptions) *daemon {
	t.Helper()
	dir, err := os.MkdirTemp(env.workDir, "d")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		dir:       dir,
		address:   filepath.Join(dir, "containerd.sock"),
		ctrPath:   ctrPath,
		stateRoot: filepath.Join(dir, "hull"),
		log:       &e2e.SyncBuffer{},
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.address, d.address+".ttrpc") + o.containerd
	hullConfig := d.hullConfig(o)
	for name, body := range map[string]string{"config.toml": config, "hull.toml": hullConfig} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.containerdPath = containerdPath
	d.shimDir = o.shimDir
	if d.shimDir == "" {
		d.shimDir = env.shimDir
	}
	d.launch(t)
	t.Cleanup(func() { d.stop(t) })
	if out, errOut, code := d.ctr(t, "images", "import", env.image); code != 0 {
		t.Fatalf("importing the image: %s%s", out, errOut)
	}
	return d
}

// launch starts containerd and waits until it serves.
func (d *daemon) launch(t testing.TB) {
	t.Helper()
	d.cmd = exec.Command(d.containerdPath, "--config", filepath.Join(d.dir, "config.toml"), "--log-level", "info")
	d.cmd.Env = append(os.Environ(),
		"PATH="+d.shimDir+":"+os.Getenv("PATH"),
		"HULL_CONFIG="+filepath.Join(d.dir, "hull.toml"))
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitServing(t)
}

// waitServing waits until containerd answers ctr.
func (d *daemon) waitServing(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, code := d.ctr(t, "version"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not come up:\n%s", d.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// restart stops containerd (SIGTERM; the shims stay) and starts it again
// with the same configuration (e2e.Restart).
func (d *daemon) restart(t testing.TB) {
	t.Helper()
	cmd, err := e2e.Restart(d.cmd, 15*time.Second, d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = cmd
	d.waitServing(t)
}

func (d *daemon) stop(t testing.TB) {
	e2e.Stop(d.cmd, 15*time.Second)
	// A failed case may leave shims and sandboxes: remove them so that
	// the next case and the next run start clean.
	for _, l := range d.leftovers() {
		var pid int
		if _, err := fmt.Sscanf(l, "process %d:", &pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := sandbox.CleanupAll(context.Background(), d.stateRoot); err != nil {
		t.Logf("cleaning up sandboxes: %v", err)
	}
	// containerd leaves its snapshot mounts behind when it stops.
	_ = exec.Command("umount", "-R", filepath.Join(d.dir, "root")).Run()
	if t.Failed() {
		// The tail: a guest that floods its log makes the whole one huge.
		t.Logf("containerd log (last %d lines at most):\n%s", daemonLogTail, e2e.LastLines(d.log.String(), daemonLogTail))
	}
}

// ctr runs ctr against the daemon and returns its stdout, stderr and exit
// code.
func (d *daemon) ctr(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	return d.ctrIn(t, nil, args...)
}

// ctrIn is ctr with stdin as ctr's standard input (nil: none).
func (d *daemon) ctrIn(t testing.TB, stdin io.Reader, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.ctrPath, append([]string{"-a", d.address}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errOut
	err := cmd.Run()
	stderr := withoutDeprecations(errOut.String())
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), stderr, 0
	case errors.As(err, &exit):
		return out.String(), stderr, exit.ExitCode()
	}
	t.Fatalf("ctr %v: %v", args, err)
	return "", "", -1
}

// mustCtr runs ctr and fails the test when it fails.
func (d *daemon) mustCtr(t testing.TB, args ...string) string {
	t.Helper()
	return e2e.MustRunCLI(t, "ctr", func(args ...string) (string, string, int) { return d.ctr(t, args...) }, args...)
}

// leftovers lists what a finished case left: processes that mention the
// hull state root (qemu, virtiofsd) or are shims of the daemon (their
// command line names its socket or, for a shim claimed from the VM
// factory, its hull configuration), mounts below the daemon's directory
// other than containerd's own snapshotter, and sandbox state directories;
// and of each task in ids, its shim's socket in /run/containerd/s and its
// cgroups. The VM factory and the warm VMs of its pool are not the cases'
// (e2e.Factory.Filter).
func (d *daemon) leftovers(ids ...string) []string {
	return d.factory.Filter(func() []string { return d.allLeftovers(ids...) })
}

func (d *daemon) allLeftovers(ids ...string) []string {
	var left []string
	for _, p := range e2e.Processes() {
		if p.Pid == d.cmd.Process.Pid {
			continue
		}
		shim := strings.Contains(p.Cmdline, "containerd-shim-hull-v2") &&
			(strings.Contains(p.Cmdline, d.address) || strings.Contains(p.Cmdline, d.hullConfigPath()))
		if shim || strings.Contains(p.Cmdline, d.stateRoot) {
			left = append(left, p.String())
		}
	}
	ms, err := e2e.MountsUnder(d.dir)
	if err != nil {
		left = append(left, err.Error())
	}
	for _, m := range ms {
		if !strings.HasPrefix(m, filepath.Join(d.dir, "root")) {
			left = append(left, "mount "+m)
		}
	}
	if des, err := os.ReadDir(d.stateRoot); err == nil {
		for _, de := range des {
			if p := filepath.Join(d.stateRoot, de.Name()); !sandbox.IsNodeState(de.Name()) {
				left = append(left, "state "+p)
			}
		}
	}
	for _, id := range ids {
		if sock := e2e.ShimSocket(d.address, ctrNamespace, id); fileExists(sock) {
			left = append(left, "shim socket "+sock)
		}
		for _, cg := range cgroupsNamed(id) {
			left = append(left, "cgroup "+cg)
		}
	}
	return left
}

// checkClean fails the test when the case left anything (leftovers, with
// the traces of the tasks ids), after giving the shims a moment to exit.
func (d *daemon) checkClean(t testing.TB, ids ...string) {
	t.Helper()
	e2e.CheckClean(t, 15*time.Second, func() []string { return d.leftovers(ids...) })
}

// pidOf returns the PID of the first process whose command line contains
// all of parts.
func pidOf(parts ...string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		ok := len(b) > 0
		for _, p := range parts {
			ok = ok && bytes.Contains(b, []byte(p))
		}
		if ok {
			return pid
		}
	}
	return 0
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// forget removes a container whatever its state, for a case that failed
// half-way.
func (d *daemon) forget(t testing.TB, id string) {
	d.ctr(t, "task", "delete", "-f", id)
	d.ctr(t, "container", "delete", id)
}

// withoutDeprecations drops ctr's own deprecation warnings (ctr 2.2+ warns
// about cgroup v1 hosts on every run) from its stderr.
func withoutDeprecations(s string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if strings.HasPrefix(l, "time=") && strings.Contains(l, "DEPRECATION") {
			continue
		}
		b.WriteString(l)
	}
	return b.String()
}
