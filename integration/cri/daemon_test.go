package cri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/startcount"
)

// handler is a CRI runtime handler the daemons configure.
type handler struct {
	// name is the handler's name in the CRI (RuntimeClass.handler).
	name string
	// runtimeType is the containerd shim runtime it maps to.
	runtimeType string
	// shim is the shim binary's name.
	shim string
	// vm says whether each pod is a VM.
	vm bool
}

var (
	runc = handler{name: "runc", runtimeType: "io.containerd.runc.v2", shim: "containerd-shim-runc-v2"}
	hull = handler{name: "hull", runtimeType: "io.containerd.hull.v2", shim: "containerd-shim-hull-v2", vm: true}
	// handlers lists runc first: it checks the harness before hull runs.
	handlers = []handler{runc, hull}
)

// need fails a case whose handler cannot run here.
func (h handler) need(t testing.TB) {
	t.Helper()
	if h.vm && env.shimErr != nil {
		t.Fatal(env.shimErr)
	}
}

// daemon is an isolated containerd with the CRI plugin: its own root,
// state, socket, CNI network, pod cgroup parent and hull state root.
// Everything but the state root is below dir.
type daemon struct {
	version   string
	dir       string
	address   string
	ctrPath   string
	stateRoot string
	// cgroupParent is the parent of the pods' cgroups, as the kubelet's
	// /kubepods.
	cgroupParent string
	logPath      string
	net          *network
	// factory is the VM factory the hull pods take VMs from, if any.
	factory *e2e.Factory
	cmd     *exec.Cmd
	conn    *grpc.ClientConn
	rt      runtime.RuntimeServiceClient
	images  runtime.ImageServiceClient
}

// startDaemon starts containerd of a version ("1.6" or "2") with the CRI
// plugin, the runc and hull handlers and a CNI network of its own, imports
// the busybox and pause images into the CRI's namespace and waits until
// the CRI sees them.
func startDaemon(t testing.TB, version string) *daemon {
	t.Helper()
	return startDaemonWith(t, version, daemonOptions{})
}

// daemonOptions add to a daemon's setup.
type daemonOptions struct {
	// assetsDir is the guest image; empty means the suite's.
	assetsDir string
	// runtime is added to the [runtime] table.
	runtime string
	// hullConfig is appended to the hull configuration the shim reads.
	hullConfig string
	// env is added to containerd's environment.
	env []string
	// containerd is added to containerd's configuration (plugin tables).
	containerd string
	// snapshotter, when set, is the hull runtime handler's snapshotter
	// (containerd 2.x), into which the images are imported too.
	snapshotter string
}

// startDaemonWith is startDaemon with o.
func startDaemonWith(t testing.TB, version string, o daemonOptions) *daemon {
	t.Helper()
	needCNI(t)
	containerdPath, ctrPath, binDir := daemonBinaries(t, version)
	dir, err := os.MkdirTemp(env.workDir, "d")
	if err != nil {
		t.Fatal(err)
	}
	// hull's state root is longer than the 28 bytes that sockets under
	// <root>/<64-hex pod id>/ would allow: the pods' state directories
	// get hashed names (sandbox.StateDir).
	stateRoot := filepath.Join(dir, "hull-state")
	if len(stateRoot) <= 28 || len(stateRoot) > config.MaxStateDirLen {
		t.Fatalf("state root %s: %d bytes, want 29..%d", stateRoot, len(stateRoot), config.MaxStateDirLen)
	}
	if err := os.Mkdir(stateRoot, 0o711); err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		version:   version,
		dir:       dir,
		address:   filepath.Join(dir, "containerd.sock"),
		ctrPath:   ctrPath,
		stateRoot: stateRoot,
		logPath:   filepath.Join(dir, "containerd.log"),
	}
	d.net = newNetwork(t, dir)
	d.cgroupParent = "/" + d.net.name
	// The hull handler is configured as docs/kubernetes.md says.
	versionLine, hullTables, err := e2e.ContainerdRuntime(version)
	if err != nil {
		t.Fatal(err)
	}
	var config string
	if version == "1.6" {
		config = configV2(d)
	} else {
		config = configV3(d)
	}
	if first, _, _ := strings.Cut(config, "\n"); first != versionLine {
		t.Fatalf("%s gives containerd %s %q, the suite writes %q", e2e.KubernetesDoc, version, versionLine, first)
	}
	config += hullTables
	if o.snapshotter != "" {
		const line = "runtime_type = 'io.containerd.hull.v2'\n"
		if !strings.Contains(config, line) {
			t.Fatalf("the hull handler's table has no %q", line)
		}
		config = strings.Replace(config, line, line+fmt.Sprintf("  snapshotter = %q\n", o.snapshotter), 1)
	}
	config += o.containerd
	if o.assetsDir == "" {
		o.assetsDir = env.assetsDir
	}
	hullConfig := fmt.Sprintf("[image]\nassets_dir = %q\n[runtime]\nstate_dir = %q\n%s", o.assetsDir, d.stateRoot, o.runtime) + o.hullConfig
	for name, body := range map[string]string{"config.toml": config, "hull.toml": hullConfig} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logFile, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }() // the daemon holds its own copy
	d.cmd = exec.Command(containerdPath, "--config", filepath.Join(dir, "config.toml"), "--log-level", "info")
	path := env.binDir + ":" + os.Getenv("PATH")
	if binDir != "" {
		path = env.binDir + ":" + binDir + ":" + os.Getenv("PATH")
	}
	d.cmd.Env = append(os.Environ(),
		"PATH="+path,
		"HULL_CONFIG="+filepath.Join(dir, "hull.toml"))
	d.cmd.Env = append(d.cmd.Env, o.env...)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop(t) })

	d.conn, err = grpc.NewClient("unix://"+d.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.rt, d.images = runtime.NewRuntimeServiceClient(d.conn), runtime.NewImageServiceClient(d.conn)
	d.waitServing(t)
	for _, archive := range []string{env.busybox, env.pause} {
		d.mustCtr(t, "-n", "k8s.io", "images", "import", archive)
		if o.snapshotter != "" {
			d.mustCtr(t, "-n", "k8s.io", "images", "import", "--local", "--snapshotter", o.snapshotter, archive)
		}
	}
	for _, ref := range []string{busyboxImage, pauseImage} {
		waitFor(t, 30*time.Second, "the CRI to see image "+ref, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := d.images.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
			return err == nil && st.Image != nil
		})
	}
	return d
}

// hullConfigPath is the hull configuration of the daemon's shims (and of
// its factory).
func (d *daemon) hullConfigPath() string { return filepath.Join(d.dir, "hull.toml") }

// waitServing waits until the daemon's CRI answers.
func (d *daemon) waitServing(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := d.rt.Version(ctx, &runtime.VersionRequest{})
		cancel()
		if err == nil {
			t.Logf("containerd %s: %s %s, CRI %s", d.version, v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CRI does not serve: %v; containerd log:\n%s", err, d.logTail(40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// restart stops containerd (SIGTERM; the shims stay) and starts it again
// with the same configuration (e2e.Restart), appending to its log.
func (d *daemon) restart(t testing.TB) {
	t.Helper()
	logFile, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }() // the daemon holds its own copy
	cmd, err := e2e.Restart(d.cmd, 15*time.Second, logFile)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = cmd
	d.waitServing(t)
}

// configV2 is containerd 1.x's configuration (version 2): the CRI is one
// plugin, io.containerd.grpc.v1.cri, with runtimes, CNI and the sandbox
// image inside. The hull runtime's tables come from docs/kubernetes.md.
func configV2(d *daemon) string {
	const cri = `plugins."io.containerd.grpc.v1.cri"`
	return fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[%[5]s]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[%[5]s.containerd]
  default_runtime_name = "runc"
[%[5]s.containerd.runtimes.runc]
  runtime_type = %[7]q
[%[5]s.cni]
  bin_dir = %[8]q
  conf_dir = %[9]q
`, filepath.Join(d.dir, "root"), filepath.Join(d.dir, "state"), d.address, d.address+".ttrpc",
		cri, pauseImage, runc.runtimeType, cniBinDir, d.net.confDir)
}

// configV3 is containerd 2.x's configuration (version 3): the CRI is split
// into io.containerd.cri.v1.images (the sandbox image is a pinned image),
// io.containerd.cri.v1.runtime (runtimes, CNI with a list of bin dirs,
// restrict_oom_score_adj) and io.containerd.grpc.v1.cri (the server and
// its streaming); the hull runtime's tables come from docs/kubernetes.md.
// NRI is off: its socket would be the host's
// /var/run/nri/nri.sock, shared with every other containerd 2.x.
func configV3(d *daemon) string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %q
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = %q
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [%q]
  conf_dir = %q
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, filepath.Join(d.dir, "root"), filepath.Join(d.dir, "state"), d.address, d.address+".ttrpc",
		pauseImage, runc.runtimeType, cniBinDir, d.net.confDir)
}

// stop removes what the CRI still has (a failed case), stops the daemon,
// kills what it left and tears the network down.
func (d *daemon) stop(t testing.TB) {
	if d.conn != nil {
		d.removeAll(t)
		_ = d.conn.Close() // the daemon goes next
	}
	e2e.Stop(d.cmd, 15*time.Second)
	for _, p := range d.processes() {
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
	}
	if err := sandbox.CleanupAll(context.Background(), d.stateRoot); err != nil {
		t.Logf("cleaning up sandboxes: %v", err)
	}
	// containerd leaves its snapshot mounts behind when it stops.
	_, _ = command("umount", "-R", filepath.Join(d.dir, "root"))
	// The boot slots are lock files, free once the shims are gone; the
	// start counts are the daemon's.
	if err := os.RemoveAll(sandbox.BootSlotsDir(d.stateRoot)); err != nil {
		t.Errorf("boot slots: %v", err)
	}
	if err := os.Remove(startcount.Path(d.stateRoot)); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("start counts: %v", err)
	}
	if err := os.Remove(d.stateRoot); err != nil {
		t.Errorf("hull state root: %v", err)
	}
	if err := d.net.teardown(); err != nil {
		t.Errorf("tearing the network down: %v", err)
	}
	if err := removeCgroups(d.cgroupParent); err != nil {
		t.Errorf("removing the pods' cgroups: %v", err)
	}
	if t.Failed() {
		t.Logf("containerd %s log (%s):\n%s", d.version, d.logPath, d.logTail(300))
	}
	if dir := os.Getenv("HULL_CRI_LOGS"); dir != "" {
		d.keepLog(t, dir)
	}
}

// keepLog copies the daemon's log into dir, named after the test.
func (d *daemon) keepLog(t testing.TB, dir string) {
	b, err := os.ReadFile(d.logPath)
	if err == nil {
		err = os.MkdirAll(dir, 0o750)
	}
	if err == nil {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + ".containerd.log"
		err = os.WriteFile(filepath.Join(dir, name), b, 0o600)
	}
	if err != nil {
		t.Logf("keeping the containerd log: %v", err)
	}
}

// removeAll stops and removes every pod the CRI knows, with their
// containers, as the kubelet's garbage collector would.
func (d *daemon) removeAll(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := d.rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
	if err != nil {
		t.Logf("listing pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		d.forgetPod(t, p.Id)
	}
}

// forgetPod stops and removes a pod whatever its state, for a case that
// failed half-way; a pod that is already gone is fine.
func (d *daemon) forgetPod(t testing.TB, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := d.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		t.Logf("stopping pod %s: %v", id, err)
	}
	if _, err := d.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		t.Logf("removing pod %s: %v", id, err)
	}
}

// ctr runs ctr against the daemon and returns its stdout, stderr and exit
// code.
func (d *daemon) ctr(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.ctrPath, append([]string{"-a", d.address}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0
	case errors.As(err, &exit):
		return out.String(), errOut.String(), exit.ExitCode()
	}
	t.Fatalf("ctr %v: %v", args, err)
	return "", "", -1
}

// mustCtr runs ctr and fails the test when it fails.
func (d *daemon) mustCtr(t testing.TB, args ...string) string {
	t.Helper()
	return e2e.MustRunCLI(t, "ctr", func(args ...string) (string, string, int) { return d.ctr(t, args...) }, args...)
}

// logTail returns the last n lines of the daemon's log.
func (d *daemon) logTail(n int) string {
	b, _ := os.ReadFile(d.logPath)
	return e2e.LastLines(string(b), n)
}

// logSince returns the daemon's log from byte offset off on, for the
// lines of one failing call.
func (d *daemon) logSince(off int64) string {
	b, _ := os.ReadFile(d.logPath)
	if off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// logSize is the daemon log's current size, for logSince.
func (d *daemon) logSize() int64 {
	fi, err := os.Stat(d.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// process is a process of the host.
type process = e2e.Process

// processes lists the processes the daemon's pods run on the host: those
// whose command line names the hull state root (qemu, virtiofsd) and the
// shims of this daemon (their command line names its socket or, for a
// shim claimed from the VM factory, its hull configuration). The VM
// factory and the warm VMs of its pool are not the pods'
// (e2e.Factory.Filter).
func (d *daemon) processes() []process {
	byLine := map[string]process{}
	kept := d.factory.Filter(func() []string {
		var lines []string
		for _, p := range e2e.Processes() {
			if p.Pid == d.cmd.Process.Pid {
				continue
			}
			shim := strings.Contains(p.Cmdline, "containerd-shim") &&
				(strings.Contains(p.Cmdline, d.address) || strings.Contains(p.Cmdline, d.hullConfigPath()))
			if shim || strings.Contains(p.Cmdline, d.stateRoot) {
				lines = append(lines, p.String())
				byLine[p.String()] = p
			}
		}
		return lines
	})
	ps := make([]process, 0, len(kept))
	for _, l := range kept {
		ps = append(ps, byLine[l])
	}
	return ps
}

// cgroupHierarchies lists the mounted cgroup hierarchies (v1 controllers
// and the unified one; /sys/fs/cgroup itself when it is the unified one).
func cgroupHierarchies() ([]string, error) {
	const root = "/sys/fs/cgroup"
	ms, err := e2e.MountsUnder(root)
	if err != nil {
		return nil, err
	}
	var hs []string
	for _, m := range ms {
		if m == root {
			var st syscall.Statfs_t
			if err := syscall.Statfs(root, &st); err != nil {
				return nil, fmt.Errorf("statfs %s: %w", root, err)
			}
			if st.Type == unix.CGROUP2_SUPER_MAGIC {
				hs = append(hs, m)
			}
			continue
		}
		if !strings.Contains(strings.TrimPrefix(m, root+"/"), "/") {
			hs = append(hs, m)
		}
	}
	return hs, nil
}

// containerCgroups lists the cgroups of containers (and of anything
// else) below the pods' cgroups, parent/pod<uid>, in every hierarchy. The
// pods' own cgroups are the kubelet's to remove; the daemon's stop does.
func containerCgroups(parent string) ([]string, error) {
	hs, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	var cgs []string
	for _, h := range hs {
		root := filepath.Join(h, parent)
		_ = filepath.WalkDir(root, func(path string, de os.DirEntry, err error) error {
			if rel, _ := filepath.Rel(root, path); err == nil && de.IsDir() && strings.Count(rel, "/") >= 1 {
				cgs = append(cgs, path)
			}
			return nil
		})
	}
	return cgs, nil
}

// removeCgroups removes parent and the (empty) cgroups below it.
func removeCgroups(parent string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		root := filepath.Join(h, parent)
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(dirs[i]) // best effort: a busy cgroup is reported by leftovers
		}
	}
	return nil
}

// isNotFound says whether a CRI call failed because its object does not
// exist.
func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }

func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
