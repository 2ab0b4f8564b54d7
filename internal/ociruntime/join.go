package ociruntime

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// checkJoins refuses a spec that joins a namespace of another hull-runtime
// container by its /proc/<pid>/ns path, as a Podman pod's members join
// their infra container's: the PID is that container's supervisor, and the
// namespaces are in its VM, which hull-runtime cannot add a container to.
// The PID is matched against the supervisors recorded under root (by PID
// and start time); the path is trusted no further than its PID.
func checkJoins(root string, spec *specs.Spec) error {
	if spec.Linux == nil {
		return nil
	}
	for _, ns := range spec.Linux.Namespaces {
		pid, ok := procNsPID(ns.Path)
		if !ok {
			continue
		}
		id, err := containerOfSupervisor(root, pid)
		if err != nil {
			return err
		}
		if id == "" {
			continue
		}
		return fmt.Errorf("%s namespace %q is hull-runtime container %s's, in a VM of its own: hull-runtime runs each container in its own VM "+
			"and cannot add one to another's, so a Podman pod's containers cannot share its namespaces; "+
			"run them as separate containers on one network (podman run --network NAME, without --pod), "+
			"or run pods through containerd's CRI with the hull shim, which runs each pod in one VM: %w",
			ns.Type, ns.Path, id, errdefs.ErrNotImplemented)
	}
	return nil
}

// procNsPID parses /proc/<pid>/ns/<kind>.
func procNsPID(p string) (int, bool) {
	rest, ok := strings.CutPrefix(p, "/proc/")
	if !ok {
		return 0, false
	}
	num, tail, ok := strings.Cut(rest, "/")
	if !ok || !strings.HasPrefix(tail, "ns/") || strings.Contains(tail[len("ns/"):], "/") {
		return 0, false
	}
	pid, err := strconv.Atoi(num)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// containerOfSupervisor is the ID of the container under root whose
// running supervisor has the PID, "" for none.
func containerOfSupervisor(root string, pid int) (string, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		_, rec, err := readRecord(root, e.Name())
		if err != nil {
			continue
		}
		if rec.Supervisor.PID == pid && rec.Supervisor.Running() {
			return rec.ID, nil
		}
	}
	return "", nil
}
