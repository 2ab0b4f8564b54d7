package storage

import (
	"fmt"
	"path/filepath"
)

// MountsUnder lists the mount points at or under dir, an absolute path, as
// /proc/self/mountinfo shows them (parents before children). A caller that
// removes a tree recursively checks it first: a removal that crosses a
// mount point deletes what the mount shows, a host directory or a
// container's files.
func MountsUnder(dir string) ([]string, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("mounts under %q: not an absolute path", dir)
	}
	return mountsUnder(filepath.Clean(dir))
}
