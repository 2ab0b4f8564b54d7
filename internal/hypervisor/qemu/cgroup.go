package qemu

import (
	"github.com/hull-runtime/hull/internal/hostcgroup"
)

// vmCgroup is the cgroup that holds the QEMU process: the one the caller
// named in hypervisor.Config.Cgroup (the sandbox's, with its limits), or
// one of the driver's own, <CgroupParent>/<VM ID>, without limits.
type vmCgroup struct {
	path string
	g    *hostcgroup.Group
	// own is set when the driver made the group and removes it.
	own bool
}

// hostFS finds the host's cgroup mounts; a variable for tests.
var hostFS = hostcgroup.Host

func newCgroup(given, own string) (*vmCgroup, error) {
	fs, err := hostFS()
	if err != nil {
		return nil, err
	}
	if given != "" {
		g, err := hostcgroup.Open(fs, given)
		if err != nil {
			return nil, err
		}
		return &vmCgroup{path: given, g: g}, nil
	}
	g, err := hostcgroup.Create(fs, own)
	if err != nil {
		return nil, err
	}
	return &vmCgroup{path: own, g: g, own: true}, nil
}

// delete removes the group when the driver made it and is the one that
// removes it; a group already gone is no error.
func (cg *vmCgroup) delete() error {
	if !cg.own {
		return nil
	}
	return cg.g.Delete()
}
