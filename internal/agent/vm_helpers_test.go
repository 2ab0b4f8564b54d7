package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agent"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/modlist"
	"github.com/hull-runtime/hull/internal/storage"
	"github.com/hull-runtime/hull/internal/virtiofs"
)

// needed fails the test in CI and skips it elsewhere.
func needed(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (required when CI is set)")
	}
	t.Skip(msg)
}

// requireVM returns the cached kernel, or stops the test saying what is
// missing: root, QEMU, virtiofsd, busybox, go, the kernel package.
func requireVM(t *testing.T) *guestimage.Kernel {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, b := range []string{qemu.DefaultBinary, "go", "busybox"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b+" in PATH")
		}
	}
	vfs := false
	for _, b := range virtiofs.Binaries {
		if _, err := os.Stat(b); err == nil {
			vfs = true
		}
	}
	if _, err := exec.LookPath("virtiofsd"); err == nil {
		vfs = true
	}
	if !vfs {
		missing = append(missing, "virtiofsd (qemu-system-common)")
	}
	debs, _ := filepath.Glob(filepath.Join(guestimage.DefaultCacheDir, "debs", "linux-image-*.deb"))
	if len(debs) == 0 {
		missing = append(missing, "a kernel package in "+filepath.Join(guestimage.DefaultCacheDir, "debs")+" (hull image build fills it)")
	}
	if len(missing) > 0 {
		needed(t, "real-VM test needs "+strings.Join(missing, ", "))
	}
	sort.Strings(debs)
	k, err := guestimage.PrepareKernel(context.Background(), guestimage.Options{KernelDeb: debs[len(debs)-1]})
	if err != nil {
		t.Fatalf("preparing the kernel: %v", err)
	}
	return k
}

// buildAgent builds hull-agent as the Makefile does: static, cgo, seccomp.
func buildAgent(t *testing.T, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-tags", "netgo,osusergo,seccomp",
		"-ldflags", "-s -w -linkmode external -extldflags -static", "-o", out, "./cmd/hull-agent")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building hull-agent: %v\n%s", err, b)
	}
}

// makeBusybox builds a root filesystem of busybox applets with a root
// user and a user 1000.
func makeBusybox(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range strings.Fields(string(list)) {
		if app == "busybox" {
			continue
		}
		_ = os.Symlink("busybox", filepath.Join(root, "bin", app))
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
		"etc/group":  "root:x:0:\nuser:x:1000:\nextra:x:2000:user\n",
	}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// vmEnv is a booted VM with a connected client and a created sandbox.
type vmEnv struct {
	c      *agentclient.Client
	ctrs   api.ContainersService
	shared *storage.Shared
	bundle string
	vm     hypervisor.VM
	vfs    *virtiofs.Daemon
}

func startVM(t *testing.T) *vmEnv {
	t.Helper()
	k := requireVM(t)
	ctx := context.Background()
	dir := t.TempDir()
	agentBin := filepath.Join(dir, "hull-agent")
	buildAgent(t, agentBin)
	if fi, err := os.Stat(agentBin); err == nil {
		t.Logf("agent binary: %.1f MiB", float64(fi.Size())/(1<<20))
	}
	initrd := filepath.Join(dir, "initrd")
	f, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	pause, err := os.ReadFile(agent.BuildPause(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	_, err = guestimage.WriteInitrd(ctx, f, guestimage.InitrdSpec{
		Init: agentBin, Kernel: k,
		Features:   []string{modlist.FeatureBusPCI, modlist.FeatureSerial, modlist.FeatureVirtioFS, modlist.FeatureOverlay},
		ExtraFiles: []guestimage.File{{Path: channel.PauseBinaryPath, Mode: 0o755, Data: pause}},
	})
	err = errors.Join(err, f.Close())
	if err != nil {
		t.Fatalf("writing initrd: %v", err)
	}

	e := &vmEnv{bundle: filepath.Join(dir, "bundle")}
	makeBusybox(t, filepath.Join(e.bundle, "rootfs"))
	// The state directory holds mounts: not under t.TempDir, whose
	// removal would run before the unmounts otherwise.
	state, err := os.MkdirTemp("/run", "hull-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(state) })
	e.shared, err = storage.New(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.shared.Close(context.Background()); err != nil {
			t.Errorf("closing shared storage: %v", err)
		}
	})
	e.vfs, err = virtiofs.Start(ctx, virtiofs.Config{SocketPath: filepath.Join(state, "vfs.sock"), SharedDir: e.shared.Dir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.vfs.Stop(context.Background()); err != nil {
			t.Logf("stopping virtiofsd: %v", err)
		}
	})

	accel := os.Getenv("HULL_TEST_ACCEL")
	if accel == "" {
		accel = qemu.AccelTCG
	}
	ep := hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName}
	vmDir := filepath.Join(state, "vm")
	if err := os.MkdirAll(vmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.vm, err = qemu.New(hypervisor.Config{
		ID: fmt.Sprintf("hull-agent-test-%d", time.Now().UnixNano()%100000), StateDir: vmDir,
		Kernel: k.BzImage(), Initrd: initrd, VCPUs: 2, MemoryMiB: 512, SharedMemory: true,
		Agent:        ep,
		Filesystems:  []hypervisor.FilesystemDevice{{Tag: storage.FSTag, SocketPath: e.vfs.SocketPath()}},
		KernelParams: agentclient.KernelParams(ep, "debug"),
	}, qemu.Options{Accel: accel, CgroupParent: "hull-agent-test"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", strings.Join(e.vm.ConsoleTail(150), "\n"))
		}
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := e.vm.Stop(sctx); err != nil {
			t.Errorf("stopping the vm: %v", err)
		}
		_ = os.Remove("/sys/fs/cgroup/hull-agent-test")
	})
	e.c, err = agentclient.Dial(ctx, e.vm.Agent(), agentclient.Options{DialTimeout: 120 * time.Second, CallTimeout: 60 * time.Second, Abort: e.vm.Done(), NoLogStream: os.Getenv("HULL_TEST_AGENT_LOG") == ""})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.c.Close() })
	t.Logf("agent answered %s after qemu start (accel %s)", time.Since(start).Round(time.Millisecond), accel)
	e.ctrs = e.c.Containers()
	if _, err := e.ctrs.CreateSandbox(ctx, &api.CreateSandboxRequest{
		SandboxId: "sb1", Hostname: "hull-vm",
		Storages: []*api.Storage{{Source: storage.FSTag, Fstype: "virtiofs", MountPoint: storage.GuestSharedDir}},
	}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	return e
}

// spec is runc's example spec for the busybox root running args.
func (e *vmEnv) spec(args ...string) *specs.Spec {
	s := specconv.Example()
	s.Root = &specs.Root{Path: "rootfs", Readonly: false}
	s.Process.Terminal = false
	s.Process.Args = args
	s.Process.Env = []string{"PATH=/bin", "HOME=/root"}
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=64m"}})
	return s
}

// share adds the container to the shared tree and returns the guest spec.
func (e *vmEnv) share(t *testing.T, id string, s *specs.Spec) []byte {
	t.Helper()
	gs, err := e.shared.AddContainer(context.Background(), storage.Container{ID: id, Spec: s, Bundle: e.bundle})
	if err != nil {
		t.Fatalf("sharing %s: %v", id, err)
	}
	b, err := json.Marshal(gs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unshare removes the container in the guest (forced) and on the host.
func (e *vmEnv) unshare(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.ctrs.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: id, Force: true}); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Errorf("removing %s in the guest: %v", id, err)
	}
	if err := e.shared.RemoveContainer(ctx, id); err != nil {
		t.Errorf("unsharing %s: %v", id, err)
	}
}

// stream collects what a stdio stream delivers.
type stream struct {
	s    agentclient.Stream
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
	err  error
}

func (e *vmEnv) open(t *testing.T, read bool) (uint64, *stream) {
	t.Helper()
	id := e.c.NewStreamID()
	s, err := e.c.OpenStream(context.Background(), id)
	if err != nil {
		t.Fatalf("opening stream: %v", err)
	}
	st := &stream{s: s, done: make(chan struct{})}
	t.Cleanup(func() { _ = s.Close() })
	if read {
		go func() {
			defer close(st.done)
			b := make([]byte, 256<<10)
			for {
				n, err := s.Read(b)
				st.mu.Lock()
				st.buf.Write(b[:n])
				st.mu.Unlock()
				if err != nil {
					if !errors.Is(err, io.EOF) {
						st.err = err
					}
					return
				}
			}
		}()
	} else {
		close(st.done)
	}
	return id, st
}

func (s *stream) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// all waits for EOF and returns everything.
func (s *stream) all(t *testing.T) string {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("stream not closed; so far %q", s.String())
	}
	if s.err != nil {
		t.Errorf("stream: %v", s.err)
	}
	return s.String()
}

// waitFor waits until the stream has delivered want.
func (s *stream) waitFor(t *testing.T, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(s.String(), want) {
			return
		}
	}
	t.Fatalf("stream lacks %q: %q", want, s.String())
}

// stdioStreams are a process's host-side streams.
type stdioStreams struct {
	in       *stream
	out, err *stream
}

// openStdio opens stdout and stderr (and stdin when in).
func (e *vmEnv) openStdio(t *testing.T, in bool) (*api.Stdio, *stdioStreams) {
	t.Helper()
	st := &api.Stdio{}
	ss := &stdioStreams{}
	if in {
		st.Stdin, ss.in = e.open(t, false)
	}
	st.Stdout, ss.out = e.open(t, true)
	st.Stderr, ss.err = e.open(t, true)
	return st, ss
}

// create shares and creates a container with stdout and stderr.
func (e *vmEnv) create(t *testing.T, id string, s *specs.Spec, in bool) *stdioStreams {
	t.Helper()
	spec := e.share(t, id, s)
	t.Cleanup(func() { e.unshare(t, id) })
	st, ss := e.openStdio(t, in)
	if _, err := e.ctrs.CreateContainer(context.Background(), &api.CreateContainerRequest{ContainerId: id, Spec: spec, Stdio: st}); err != nil {
		t.Fatalf("CreateContainer %s: %v", id, err)
	}
	return ss
}

func (e *vmEnv) start(t *testing.T, id string) {
	t.Helper()
	if _, err := e.ctrs.StartContainer(context.Background(), &api.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
}

func (e *vmEnv) wait(t *testing.T, id, exec string) int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	r, err := e.ctrs.WaitProcess(ctx, &api.WaitProcessRequest{ContainerId: id, ExecId: exec})
	if err != nil {
		t.Fatalf("WaitProcess %s/%s: %v", id, exec, err)
	}
	return r.GetExitStatus()
}

// run runs a container to its end and returns its output and status.
func (e *vmEnv) run(t *testing.T, id string, s *specs.Spec) (string, string, int32) {
	t.Helper()
	ss := e.create(t, id, s, false)
	e.start(t, id)
	st := e.wait(t, id, "")
	return ss.out.all(t), ss.err.all(t), st
}

// processJSON is an exec's OCI process.
func processJSON(t *testing.T, p specs.Process) []byte {
	t.Helper()
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if p.Env == nil {
		p.Env = []string{"PATH=/bin"}
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
