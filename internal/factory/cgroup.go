package factory

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/hull-runtime/hull/internal/hostcgroup"
)

// JoinCgroupsOfSelf moves the process pid into the cgroups of the calling
// process, in every hierarchy it is in: a claimed warm shim joins the
// cgroups of the `shim start` that claimed it (containerd's), where a
// cold shim server is born, and leaves the factory's (whose service unit
// may be stopped with its processes).
func JoinCgroupsOfSelf(pid int) error {
	dirs, err := hostcgroup.SelfDirs()
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil { //nolint:gosec // G703: paths from the kernel's own cgroup and mount tables
			errs = append(errs, fmt.Errorf("moving pid %d into %s: %w", pid, d, err))
		}
	}
	return errors.Join(errs...)
}
