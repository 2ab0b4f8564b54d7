package containerd

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/ociimage"
)

// env is what TestMain found and built.
var env struct {
	assetsDir string
	workDir   string
	// shimDir holds containerd-shim-hull-v2 built for this run.
	shimDir string
	// image is the busybox OCI archive.
	image string
	// binDir holds hull and hull-agent (HULL_BIN_DIR).
	binDir string
	// mode is where TestContainerd's pods get their VMs
	// (HULL_TEST_FACTORY).
	mode e2e.FactoryMode
}

// debugImage returns the suite's guest image with a debug shell.
func debugImage(t *testing.T) string { return e2e.DebugImage(t, env.binDir, env.workDir) }

func TestMain(m *testing.M) { os.Exit(e2e.Main(m, "containerd e2e tests", setup, &env.workDir)) }

func setup() error {
	assets, dir, err := e2e.Prepare("hull-ctrd-", "integration")
	if err != nil {
		return err
	}
	env.assetsDir, env.workDir = assets, dir
	if env.mode, err = e2e.FactoryModeFromEnv(); err != nil {
		return err
	}
	if env.binDir = os.Getenv("HULL_BIN_DIR"); env.binDir == "" {
		return fmt.Errorf("HULL_BIN_DIR must be set; run `make e2e`")
	}
	env.shimDir = filepath.Join(dir, "bin")
	if err := e2e.BuildShim(env.shimDir); err != nil {
		return err
	}
	env.image = filepath.Join(dir, "busybox.tar")
	if err := ociimage.WriteBusyboxFile(env.image, ociimage.BusyboxOptions{Name: imageName}); err != nil {
		return fmt.Errorf("building the busybox image: %w", err)
	}
	return nil
}

// daemonBinaries finds containerd and ctr of a version (e2e.DaemonBinaries).
func daemonBinaries(t testing.TB, version string) (containerd, ctr string) {
	t.Helper()
	containerd, ctr, _ = e2e.DaemonBinaries(t, version)
	return containerd, ctr
}
