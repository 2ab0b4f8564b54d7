package docker

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

func openTTY(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

type errStatus string

func (e errStatus) Error() string { return "status " + string(e) }

// writeHullConfig writes hull.toml into dir, the suite's hull
// configuration with the sandboxes' state under stateRoot, and returns its
// path.
func writeHullConfig(t *testing.T, dir, stateRoot string) string {
	t.Helper()
	path := filepath.Join(dir, "hull.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("[image]\nassets_dir = %q\n[runtime]\nstate_dir = %q\n", env.assetsDir, stateRoot)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// needTools reports (e2e.Missing) a missing one of bins, Debian's package
// pkg, or a bins[0] whose --version is not product ("Docker 20.10": its
// version " 20.10.").
func needTools(t *testing.T, pkg, product string, bins ...string) {
	t.Helper()
	for _, p := range bins {
		if _, err := os.Stat(p); err != nil {
			e2e.Missing(t, "%s: %v (apt-get install %s, or make deps)", p, err, pkg)
		}
	}
	_, version, _ := strings.Cut(product, " ")
	if out, err := exec.Command(bins[0], "--version").Output(); err != nil || !strings.Contains(string(out), " "+version+".") {
		e2e.Missing(t, "%s is not %s: %q %v", bins[0], product, out, err)
	}
}
