package containerd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hull-runtime/hull/internal/ociimage"
)

// Containerd2Version is the containerd 2.x the suite builds and caches.
const Containerd2Version = "v2.4.2"

// env is what TestMain found and built.
var env struct {
	assetsDir string
	workDir   string
	// shimDir holds containerd-shim-hull-v2 built for this run.
	shimDir string
	// image is the busybox OCI archive.
	image string
}

func TestMain(m *testing.M) {
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "containerd e2e tests cannot run: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	_ = os.RemoveAll(env.workDir) // best-effort teardown of a /tmp directory
	os.Exit(code)
}

func setup() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("they need root (VMs, mounts, containerd)")
	}
	env.assetsDir = os.Getenv("HULL_ASSETS_DIR")
	if env.assetsDir == "" {
		return fmt.Errorf("HULL_ASSETS_DIR must be set; run `make integration`")
	}
	dir, err := os.MkdirTemp("/tmp", "hull-ctrd-")
	if err != nil {
		return err
	}
	env.workDir = dir
	env.shimDir = filepath.Join(dir, "bin")
	cmd := exec.Command("go", "build", "-o", filepath.Join(env.shimDir, "containerd-shim-hull-v2"), "github.com/hull-runtime/hull/cmd/containerd-shim-hull-v2")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the shim: %w\n%s", err, out)
	}
	env.image = filepath.Join(dir, "busybox.tar")
	if err := ociimage.WriteBusyboxFile(env.image, ociimage.BusyboxOptions{Name: imageName}); err != nil {
		return fmt.Errorf("building the busybox image: %w", err)
	}
	return nil
}

// daemonBinaries finds containerd and ctr of a version: "1.6" is Debian's,
// on PATH; "2" is Containerd2Version, built once into the cache. In CI a
// missing daemon is a failure, elsewhere a skip.
func daemonBinaries(t testing.TB, version string) (containerd, ctr string) {
	t.Helper()
	missing := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CI") != "" {
			t.Fatalf("CI: %s", msg)
		}
		t.Skip(msg)
	}
	switch version {
	case "1.6":
		c, err1 := exec.LookPath("containerd")
		r, err2 := exec.LookPath("ctr")
		if err1 != nil || err2 != nil {
			missing("containerd 1.6 or ctr not found (apt-get install containerd)")
		}
		return c, r
	}
	dir := os.Getenv("HULL_CONTAINERD2_DIR")
	if dir == "" {
		dir = filepath.Join("/var/cache/hull", "containerd-"+Containerd2Version)
	}
	c, r := filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr")
	if _, err := os.Stat(c); err == nil {
		if _, err := os.Stat(r); err == nil {
			return c, r
		}
	}
	if os.Getenv("CI") == "" && os.Getenv("HULL_BUILD_CONTAINERD") == "" {
		missing("containerd %s not in %s: set HULL_BUILD_CONTAINERD=1 to build it (go install, a few minutes)", Containerd2Version, dir)
	}
	t.Logf("building containerd %s into %s", Containerd2Version, dir)
	cmd := exec.Command("go", "install", "-tags", "no_btrfs",
		"github.com/containerd/containerd/v2/cmd/containerd@"+Containerd2Version,
		"github.com/containerd/containerd/v2/cmd/ctr@"+Containerd2Version)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
	cmd.Dir = os.TempDir()
	if out, err := cmd.CombinedOutput(); err != nil {
		missing("building containerd %s: %v\n%s", Containerd2Version, err, out)
	}
	return c, r
}
