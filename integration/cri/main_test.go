package cri

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/ociimage"
)

// Containerd2Version is the containerd 2.x the suite runs; integration/
// containerd builds and caches it.
const Containerd2Version = "v2.4.2"

// cniBinDir is where Debian's containernetworking-plugins installs the
// plugins.
const cniBinDir = "/usr/lib/cni"

// Image references; the pause image is the daemons' sandbox image.
const (
	busyboxImage = ociimage.DefaultName
	pauseImage   = ociimage.DefaultPauseName
)

// env is what TestMain found and built.
var env struct {
	assetsDir string
	workDir   string
	// binDir holds containerd-shim-hull-v2 built for this run; shimErr
	// says why it is not there. A shim that does not build fails the hull
	// cases only, so that the runc cases still check the harness.
	binDir  string
	shimErr error
	// busybox and pause are the OCI archives of the two images.
	busybox, pause string
}

func TestMain(m *testing.M) {
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "CRI e2e tests cannot run: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	_ = os.RemoveAll(env.workDir) // best-effort teardown of a /tmp directory
	os.Exit(code)
}

func setup() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("they need root (VMs, mounts, network namespaces, containerd)")
	}
	env.assetsDir = os.Getenv("HULL_ASSETS_DIR")
	if env.assetsDir == "" {
		return fmt.Errorf("HULL_ASSETS_DIR must be set; run `make e2e-cri`")
	}
	dir, err := os.MkdirTemp("/tmp", "hull-cri-")
	if err != nil {
		return err
	}
	env.workDir = dir
	env.binDir = filepath.Join(dir, "bin")
	cmd := exec.Command("go", "build", "-o", filepath.Join(env.binDir, "containerd-shim-hull-v2"), "github.com/hull-runtime/hull/cmd/containerd-shim-hull-v2")
	if out, err := cmd.CombinedOutput(); err != nil {
		env.shimErr = fmt.Errorf("building the shim: %w\n%s", err, out)
	}
	env.busybox = filepath.Join(dir, "busybox.tar")
	if err := ociimage.WriteBusyboxFile(env.busybox, ociimage.BusyboxOptions{}); err != nil {
		return fmt.Errorf("building the busybox image: %w", err)
	}
	env.pause = filepath.Join(dir, "pause.tar")
	if err := ociimage.WriteBusyboxFile(env.pause, ociimage.PauseOptions()); err != nil {
		return fmt.Errorf("building the pause image: %w", err)
	}
	return nil
}

// missing reports a missing tool or daemon: in CI a failure, elsewhere a
// skip.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("CI: %s", msg)
	}
	t.Skip(msg)
}

// needCNI checks for the CNI plugins the suite's network uses.
func needCNI(t testing.TB) {
	t.Helper()
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			missing(t, "CNI plugin %s not in %s (apt-get install containernetworking-plugins)", p, cniBinDir)
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing(t, "ip not found (apt-get install iproute2)")
	}
}

// daemonBinaries finds containerd and ctr of a version, and the directory
// to put first on the daemon's PATH for its runc shim: "1.6" is Debian's,
// on PATH; "2" is Containerd2Version from the cache integration/containerd
// fills (or HULL_CONTAINERD2_DIR), where it also needs containerd's own
// containerd-shim-runc-v2: containerd 2.4 starts shims with its bootstrap
// protocol on stdin, which Debian's 1.6 runc shim reads as options and
// refuses ("type with url <id>: not found"). In CI a missing daemon is a
// failure, elsewhere a skip.
func daemonBinaries(t testing.TB, version string) (containerd, ctr, dir string) {
	t.Helper()
	if version == "1.6" {
		c, err1 := exec.LookPath("containerd")
		r, err2 := exec.LookPath("ctr")
		_, err3 := exec.LookPath("containerd-shim-runc-v2")
		if err1 != nil || err2 != nil || err3 != nil {
			missing(t, "containerd 1.6, ctr or containerd-shim-runc-v2 not found (apt-get install containerd)")
		}
		return c, r, ""
	}
	dir = os.Getenv("HULL_CONTAINERD2_DIR")
	if dir == "" {
		dir = filepath.Join("/var/cache/hull", "containerd-"+Containerd2Version)
	}
	cmds := []string{"containerd", "ctr", "containerd-shim-runc-v2"}
	var absent []string
	for _, c := range cmds {
		if _, err := os.Stat(filepath.Join(dir, c)); err != nil {
			absent = append(absent, c)
		}
	}
	if len(absent) == 0 {
		return filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr"), dir
	}
	if os.Getenv("CI") == "" && os.Getenv("HULL_BUILD_CONTAINERD") == "" {
		missing(t, "%s %s not in %s: set HULL_BUILD_CONTAINERD=1 to build (go install, a few minutes)", strings.Join(absent, ", "), Containerd2Version, dir)
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
		missing(t, "building containerd %s: %v\n%s", Containerd2Version, err, out)
	}
	return filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr"), dir
}
