package docker

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/ociimage"
)

// imageName is the busybox image's name; docker load tags it so.
const imageName = "docker.io/hull/busybox:latest"

// env is what TestMain found and built.
var env struct {
	assetsDir, workDir string
	// runtime is hull-runtime, from HULL_BIN_DIR.
	runtime string
	// image is the busybox archive (OCI layout and docker-save manifest).
	image string
}

func TestMain(m *testing.M) { os.Exit(e2e.Main(m, "docker e2e tests", setup, &env.workDir)) }

func setup() error {
	assets, dir, err := e2e.Prepare("hull-dk-", "e2e-docker")
	if err != nil {
		return err
	}
	env.assetsDir, env.workDir = assets, dir
	bin := os.Getenv("HULL_BIN_DIR")
	if bin == "" {
		return fmt.Errorf("HULL_BIN_DIR must be set; run `make e2e-docker`")
	}
	env.runtime = filepath.Join(bin, "hull-runtime")
	if _, err := os.Stat(env.runtime); err != nil {
		return fmt.Errorf("%w; run `make build`", err)
	}
	env.image = filepath.Join(dir, "busybox.tar")
	if err := ociimage.WriteBusyboxFile(env.image, ociimage.BusyboxOptions{Name: imageName}); err != nil {
		return fmt.Errorf("building the busybox image: %w", err)
	}
	return nil
}
