package cri

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/ociimage"
)

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
	// mode is where TestCRI's hull pods get their VMs
	// (HULL_TEST_FACTORY).
	mode e2e.FactoryMode
}

func TestMain(m *testing.M) { os.Exit(e2e.Main(m, "CRI e2e tests", setup, &env.workDir)) }

func setup() error {
	assets, dir, err := e2e.Prepare("hull-cri-", "e2e-cri")
	if err != nil {
		return err
	}
	env.assetsDir, env.workDir = assets, dir
	if env.mode, err = e2e.FactoryModeFromEnv(); err != nil {
		return err
	}
	env.binDir = filepath.Join(dir, "bin")
	env.shimErr = e2e.BuildShim(env.binDir)
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

// missing is e2e.Missing.
var missing = e2e.Missing

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

// daemonBinaries finds containerd, ctr and containerd-shim-runc-v2 of a
// version (e2e.DaemonBinaries), and the directory to put first on the
// daemon's PATH for its runc shim (empty for 1.6). containerd 2.x needs its
// own containerd-shim-runc-v2: it starts shims with its bootstrap protocol
// on stdin, which Debian's 1.6 runc shim reads as options and refuses
// ("type with url <id>: not found").
func daemonBinaries(t testing.TB, version string) (containerd, ctr, dir string) {
	t.Helper()
	return e2e.DaemonBinaries(t, version, "containerd-shim-runc-v2")
}
