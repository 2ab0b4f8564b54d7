package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/storage"
)

// removeTreeIfUnmounted removes dir and everything below it, unless
// anything at or below dir is mounted: os.RemoveAll crosses mount points
// and would delete what a mount shows (a host directory bound for a
// container, an image's files). Then it removes nothing and fails, and the
// directory stays for a later cleanup once the mounts are gone. A missing
// dir is no error.
func removeTreeIfUnmounted(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("removing %q: not an absolute path: %w", dir, errdefs.ErrInvalidArgument)
	}
	dir = filepath.Clean(dir)
	// mountinfo shows resolved paths.
	real, err := filepath.EvalSymlinks(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	points, err := storage.MountsUnder(real)
	if err != nil {
		return fmt.Errorf("removing %s: reading the mount table: %w", dir, err)
	}
	if len(points) > 0 {
		return fmt.Errorf("keeping %s: still mounted at or below it: %s: %w", dir, strings.Join(points, ", "), errdefs.ErrFailedPrecondition)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}
