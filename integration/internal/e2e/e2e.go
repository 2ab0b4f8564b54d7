// Package e2e holds what the end-to-end suites share: finding (or building)
// the containerd daemons they drive, building the shim, and a buffer that a
// process writes while a test reads it.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Containerd2Version is the containerd 2.x the suites run, built once into
// the cache.
const Containerd2Version = "v2.4.2"

// LogLoad logs the host's load average (/proc/loadavg), which the
// benchmarks record beside their figures.
func LogLoad(t testing.TB) {
	t.Helper()
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		t.Logf("load average: %s", strings.TrimSpace(string(load)))
	}
}

// Missing reports a missing tool or daemon: in CI a failure, elsewhere a
// skip.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("CI: %s", msg)
	}
	t.Skip(msg)
}

// DaemonBinaries finds containerd and ctr of a version, with the other
// commands of containerd's module that extra names (containerd-shim-runc-v2):
// "1.6" is Debian's, on PATH (dir is empty); "2" is Containerd2Version, in
// HULL_CONTAINERD2_DIR or /var/cache/hull, built there with go install when
// absent in CI or with HULL_BUILD_CONTAINERD set.
func DaemonBinaries(t testing.TB, version string, extra ...string) (containerd, ctr, dir string) {
	t.Helper()
	cmds := append([]string{"containerd", "ctr"}, extra...)
	if version == "1.6" {
		var absent []string
		for _, c := range cmds {
			if _, err := exec.LookPath(c); err != nil {
				absent = append(absent, c)
			}
		}
		if len(absent) > 0 {
			Missing(t, "%s not found (apt-get install containerd)", strings.Join(absent, ", "))
		}
		containerd, _ = exec.LookPath("containerd")
		ctr, _ = exec.LookPath("ctr")
		return containerd, ctr, ""
	}
	dir = os.Getenv("HULL_CONTAINERD2_DIR")
	if dir == "" {
		dir = filepath.Join("/var/cache/hull", "containerd-"+Containerd2Version)
	}
	containerd, ctr = filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr")
	var absent []string
	for _, c := range cmds {
		if _, err := os.Stat(filepath.Join(dir, c)); err != nil { //nolint:gosec // G703: dir is the cache directory that whoever runs the tests chose
			absent = append(absent, c)
		}
	}
	if len(absent) == 0 {
		return containerd, ctr, dir
	}
	if os.Getenv("CI") == "" && os.Getenv("HULL_BUILD_CONTAINERD") == "" {
		Missing(t, "%s %s not in %s: set HULL_BUILD_CONTAINERD=1 to build (go install, a few minutes)", strings.Join(absent, ", "), Containerd2Version, dir)
	}
	t.Logf("building %s %s into %s", strings.Join(absent, ", "), Containerd2Version, dir)
	args := []string{"install", "-tags", "no_btrfs"}
	for _, c := range absent {
		args = append(args, "github.com/containerd/containerd/v2/cmd/"+c+"@"+Containerd2Version)
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
	cmd.Dir = os.TempDir()
	if out, err := cmd.CombinedOutput(); err != nil {
		Missing(t, "building containerd %s: %v\n%s", Containerd2Version, err, out)
	}
	return containerd, ctr, dir
}

// NerdctlVersion is the nerdctl the suites run, built once into the cache
// by hack/build-nerdctl.sh (hack/install-deps.sh runs it).
const NerdctlVersion = "v2.0.5"

// Nerdctl finds nerdctl: in HULL_NERDCTL_DIR or
// /var/cache/hull/nerdctl-<NerdctlVersion>.
func Nerdctl(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("HULL_NERDCTL_DIR")
	if dir == "" {
		dir = filepath.Join("/var/cache/hull", "nerdctl-"+NerdctlVersion)
	}
	p := filepath.Join(dir, "nerdctl")
	if _, err := os.Stat(p); err != nil { //nolint:gosec // G703: dir is the cache directory that whoever runs the tests chose
		Missing(t, "nerdctl %s: %v (hack/build-nerdctl.sh builds it; make deps runs that)", NerdctlVersion, err)
	}
	return p
}

// BuildShim builds containerd-shim-hull-v2 into dir, and links the
// hull-agent of HULL_BIN_DIR beside it, where a warm shim of the VM
// factory finds the binary of its warm-up container (launch.AgentBinary),
// as in an installed layout.
func BuildShim(dir string) error {
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "containerd-shim-hull-v2"), "github.com/hull-runtime/hull/cmd/containerd-shim-hull-v2")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the shim: %w\n%s", err, out)
	}
	binDir := os.Getenv("HULL_BIN_DIR")
	if binDir == "" {
		return fmt.Errorf("HULL_BIN_DIR must be set (the directory of make build's binaries)")
	}
	agent, err := filepath.Abs(filepath.Join(binDir, "hull-agent"))
	if err != nil {
		return err
	}
	if _, err := os.Stat(agent); err != nil { //nolint:gosec // G703: binDir is the build directory that whoever runs the tests chose
		return fmt.Errorf("the agent binary: %w (make build)", err)
	}
	return os.Symlink(agent, filepath.Join(dir, "hull-agent"))
}

// DebugShell is the debug shell the suites put into their debug images.
const DebugShell = "/bin/busybox"

// debugImage is the image DebugImage built, once per test binary.
var debugImage struct {
	sync.Once
	dir string
	err error
}

// DebugImage returns a guest image with DebugShell as its debug shell, for
// `hull exec`, built on first use into workDir with the hull and hull-agent
// binaries of binDir and the default kernel package (cached by `make image`).
func DebugImage(t testing.TB, binDir, workDir string) string {
	t.Helper()
	debugImage.Do(func() {
		out := filepath.Join(workDir, "assets-debug-shell")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if debugImage.err = buildDebugImage(ctx, binDir, out); debugImage.err == nil {
			debugImage.dir = out
		}
	})
	if debugImage.err != nil {
		t.Fatal(debugImage.err)
	}
	return debugImage.dir
}

func buildDebugImage(ctx context.Context, binDir, out string) error {
	if _, err := os.Stat(DebugShell); err != nil {
		return fmt.Errorf("the debug console tests need busybox-static (%s): %w", DebugShell, err)
	}
	// The defaults, not whatever /etc/hull holds on this machine.
	cfg := filepath.Join(filepath.Dir(out), "image-defaults.toml")
	if err := os.WriteFile(cfg, []byte("# defaults\n"), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "hull"), "--config", cfg, "image", "build", "--quiet",
		"--agent", filepath.Join(binDir, "hull-agent"), "--pause", filepath.Join(binDir, "hull-pause"), "--debug-shell", DebugShell, "--output", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("hull image build --debug-shell: %w\n%s", err, b)
	}
	return nil
}

// SyncBuffer is a bytes.Buffer safe for a writer and concurrent readers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Len is how many bytes were written so far.
func (s *SyncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// Since returns what was written from offset off on (an earlier Len).
func (s *SyncBuffer) Since(off int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off > s.b.Len() {
		return ""
	}
	return string(s.b.Bytes()[off:])
}

// Bytes returns a copy of what was written so far.
func (s *SyncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// WaitFor polls until the buffer contains want, failing after d.
func (s *SyncBuffer) WaitFor(t testing.TB, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(s.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output %q does not show %q after %s", s.String(), want, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Main is a suite's TestMain: it runs the tests once setup made the suite
// ready, then removes the work directory that *workDir names (best effort:
// a leftover temporary directory must not change the exit status), and
// returns the exit status. A setup that fails ends the run with status 2,
// saying why ("<suite> cannot run: ...").
func Main(m *testing.M, suite string, setup func() error, workDir *string) int {
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "%s cannot run: %v\n", suite, err)
		return 2
	}
	code := m.Run()
	_ = os.RemoveAll(*workDir)
	return code
}

// Prepare checks that the suite can run (root, HULL_ASSETS_DIR set; target
// is the make target that sets it) and makes its work directory in /tmp
// named after prefix.
func Prepare(prefix, target string) (assetsDir, workDir string, err error) {
	if os.Geteuid() != 0 {
		return "", "", fmt.Errorf("they need root (VMs, mounts, network namespaces, containerd)")
	}
	assetsDir = os.Getenv("HULL_ASSETS_DIR")
	if assetsDir == "" {
		return "", "", fmt.Errorf("HULL_ASSETS_DIR must be set; run `make %s`", target)
	}
	workDir, err = os.MkdirTemp("/tmp", prefix)
	if err != nil {
		return "", "", err
	}
	return assetsDir, workDir, nil
}

// Stop ends a daemon: SIGTERM, then SIGKILL when it is still there after
// grace. It returns once the process has been waited for.
func Stop(cmd *exec.Cmd, grace time.Duration) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops a daemon as a service manager does (Stop: SIGTERM, then
// SIGKILL after grace; a containerd's shims stay) and starts the same
// command again: binary, arguments, environment, directory and process
// attributes, writing to out. The caller waits until it serves.
func Restart(cmd *exec.Cmd, grace time.Duration, out io.Writer) (*exec.Cmd, error) {
	Stop(cmd, grace)
	next := exec.Command(cmd.Path, cmd.Args[1:]...) //nolint:gosec // G204: the daemon the test started
	next.Env, next.Dir, next.SysProcAttr = cmd.Env, cmd.Dir, cmd.SysProcAttr
	next.Stdout, next.Stderr = out, out
	if err := next.Start(); err != nil {
		return nil, fmt.Errorf("restarting %s: %w", cmd.Path, err)
	}
	return next, nil
}

// HostileAgentTag is the build tag of the hostile test agent
// (internal/agent/hostile.go).
const HostileAgentTag = "hulltest_hostile"

// hostileImage is the image HostileImage built, once per test binary.
var hostileImage struct {
	sync.Once
	dir string
	err error
}

// HostileImage returns a guest image whose agent is the hostile test build
// (the Makefile's agent build plus HostileAgentTag), built on first use
// into workDir with the hull binary of binDir and the default kernel
// package (cached by `make image`). Its behaviours are chosen with the
// kernel parameter hull.hostile.
func HostileImage(t testing.TB, binDir, workDir string) string {
	t.Helper()
	hostileImage.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		dir := filepath.Join(workDir, "hostile")
		if hostileImage.err = buildHostileImage(ctx, binDir, dir); hostileImage.err == nil {
			hostileImage.dir = filepath.Join(dir, "assets")
		}
	})
	if hostileImage.err != nil {
		t.Fatal(hostileImage.err)
	}
	return hostileImage.dir
}

func buildHostileImage(ctx context.Context, binDir, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: a test's scratch directory
		return err
	}
	agent := filepath.Join(dir, "hull-agent")
	build := exec.CommandContext(ctx, "go", "build", "-tags", "netgo,osusergo,seccomp,"+HostileAgentTag,
		"-ldflags", "-s -w -linkmode external -extldflags -static", "-o", agent, "github.com/hull-runtime/hull/cmd/hull-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the hostile agent: %w\n%s", err, out)
	}
	// The defaults, not whatever /etc/hull holds on this machine.
	cfg := filepath.Join(dir, "image-defaults.toml")
	if err := os.WriteFile(cfg, []byte("# defaults\n"), 0o600); err != nil {
		return err
	}
	img := exec.CommandContext(ctx, filepath.Join(binDir, "hull"), "--config", cfg, "image", "build", "--quiet",
		"--agent", agent, "--pause", filepath.Join(binDir, "hull-pause"), "--output", filepath.Join(dir, "assets"))
	if out, err := img.CombinedOutput(); err != nil {
		return fmt.Errorf("hull image build with the hostile agent: %w\n%s", err, out)
	}
	return nil
}

// CheckClean fails the test when leftovers (what a case left: processes,
// mounts, state) lists anything after within, which gives shims, VMs and
// supervisors a moment to go.
func CheckClean(t testing.TB, within time.Duration, leftovers func() []string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := leftovers()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("left behind:\n  %s", strings.Join(left, "\n  "))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// LastLines returns the last n lines of s (a log), without the final
// newline.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
