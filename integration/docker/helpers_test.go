package docker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
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
