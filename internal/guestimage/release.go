package guestimage

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
)

// releasePattern is what a kernel release (`uname -r`) may look like here:
// it becomes part of the image's file names, so it must be one plain path
// element.
var releasePattern = regexp.MustCompile(`^[0-9][0-9A-Za-z._+~-]*$`)

// maxRelease bounds a release (the kernel's own limit is 64, __NEW_UTS_LEN).
const maxRelease = 64

// validRelease checks a kernel release read from a package or a vmlinux
// before it names any file.
func validRelease(rel string) error {
	if len(rel) > maxRelease || !releasePattern.MatchString(rel) || strings.Contains(rel, "..") {
		return fmt.Errorf("kernel release %q is not a plain release (want %s, at most %d characters, no \"..\"): %w",
			rel, releasePattern, maxRelease, errdefs.ErrInvalidArgument)
	}
	return nil
}

// outputPath is dir/name for a file the builder writes, refused unless name
// is a single path element.
func outputPath(dir, name string) (string, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name || strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("output file name %q is not a plain file name: %w", name, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(dir, name), nil
}
