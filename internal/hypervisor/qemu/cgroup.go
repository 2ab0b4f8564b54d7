package qemu

import (
	"errors"
	"fmt"
	"os"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// vmCgroup is the cgroup that holds one QEMU process: a v1 group in every
// mounted hierarchy on legacy and hybrid hosts, a v2 group on unified
// hosts. It sets no limits yet; it gives the VM its own accounting and a
// handle to limit it later.
type vmCgroup struct {
	path string
	v1   cgroup1.Cgroup
	v2   *cgroup2.Manager
}

// cgroupRoot is the v2 mount point.
const cgroupRoot = "/sys/fs/cgroup"

func newCgroup(path string) (*vmCgroup, error) {
	cg := &vmCgroup{path: path}
	var err error
	switch cgroups.Mode() {
	case cgroups.Unified:
		cg.v2, err = cgroup2.NewManager(cgroupRoot, path, &cgroup2.Resources{})
	case cgroups.Legacy, cgroups.Hybrid:
		cg.v1, err = cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
	default:
		return nil, fmt.Errorf("creating cgroup %s: no cgroup file system mounted", path)
	}
	if err != nil {
		return nil, fmt.Errorf("creating cgroup %s: %w", path, err)
	}
	return cg, nil
}

// add moves every thread of pid into the group.
func (cg *vmCgroup) add(pid int) error {
	var err error
	if cg.v2 != nil {
		err = cg.v2.AddProc(uint64(pid))
	} else {
		err = cg.v1.Add(cgroup1.Process{Pid: pid})
	}
	if err != nil {
		return fmt.Errorf("moving pid %d into cgroup %s: %w", pid, cg.path, err)
	}
	return nil
}

// delete removes the group, which must hold no process; a group already
// gone is no error.
func (cg *vmCgroup) delete() error {
	var err error
	if cg.v2 != nil {
		err = cg.v2.Delete()
	} else {
		err = cg.v1.Delete()
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing cgroup %s: %w", cg.path, err)
	}
	return nil
}
