package ociruntime

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/internal/atomicfile"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/storage"
)

// DefaultRoot is where container state lives without --root.
const DefaultRoot = "/run/hull-runtime"

const (
	// recordFile is a container's record in its state directory.
	recordFile = "state.json"
	// sockName is the supervisor's socket in the state directory.
	sockName = "sock"
)

// errNotExist is runc's answer for an ID it does not know; container
// managers match its text ("does not exist").
var errNotExist = errors.New("container does not exist")

// errNotRunning is runc's answer to a kill of a stopped container;
// containerd's runc shim matches its text ("container not running").
var errNotRunning = errors.New("container not running")

// record is what hull-runtime keeps of a container in <root>/<id>: written
// once by create, read by every later command.
type record struct {
	ID          string            `json:"id"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Owner       string            `json:"owner"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Supervisor is the process that stands for the container.
	Supervisor child.Process `json:"supervisor"`
	// HullConfig is the configuration file the container was created
	// with ("" for config.Load's search).
	HullConfig string `json:"hull_config,omitempty"`
	// SandboxRoot and SandboxID name the container's sandbox, for the
	// cleanup after a supervisor that died.
	SandboxRoot string `json:"sandbox_root"`
	SandboxID   string `json:"sandbox_id"`
	// Poststart and Poststop are the host hooks that later commands run.
	Poststart []specs.Hook `json:"poststart,omitempty"`
	Poststop  []specs.Hook `json:"poststop,omitempty"`
}

// containerDir is the state directory of container id below root.
func containerDir(root, id string) (string, error) {
	if err := storage.ValidateID(id); err != nil {
		return "", err
	}
	if !filepath.IsAbs(root) {
		return "", fmt.Errorf("--root %q is not absolute: %w", root, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(root, id), nil
}

func writeRecord(dir string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, recordFile), b)
}

// readRecord reads the record of container id; errNotExist (NotFound)
// when there is none.
func readRecord(root, id string) (string, record, error) {
	dir, err := containerDir(root, id)
	if err != nil {
		return "", record{}, err
	}
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, os.ErrNotExist) {
		return dir, record{}, fmt.Errorf("%s: %w: %w", id, errNotExist, errdefs.ErrNotFound)
	}
	if err != nil {
		return dir, record{}, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return dir, record{}, fmt.Errorf("container %s: reading %s: %w", id, recordFile, err)
	}
	return dir, r, nil
}

// The container statuses of runc's state.
const (
	statusCreating = "creating"
	statusCreated  = "created"
	statusRunning  = "running"
	statusPaused   = "paused"
	statusStopped  = "stopped"
)

// containerState is runc's `state` output.
type containerState struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Pid         int               `json:"pid"`
	Status      string            `json:"status"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Owner       string            `json:"owner"`
}

// status asks the supervisor for the container's status: stopped when the
// supervisor is gone (the workload has exited, or it never ran).
func status(dir string, r record) string {
	if !r.Supervisor.Running() {
		return statusStopped
	}
	resp, err := call(filepath.Join(dir, sockName), request{Op: opState})
	if err != nil {
		// Still booting, or tearing down after the workload exited.
		if r.Supervisor.Running() {
			return statusCreating
		}
		return statusStopped
	}
	return resp.Status
}

func (r record) state(status string) containerState {
	pid := r.Supervisor.PID
	if status == statusStopped {
		pid = 0
	}
	return containerState{
		OCIVersion: specs.Version, ID: r.ID, Pid: pid, Status: status, Bundle: r.Bundle,
		Rootfs: r.Rootfs, Created: r.Created, Annotations: r.Annotations, Owner: r.Owner,
	}
}

// hookState is the state a hook reads on its stdin.
func (r record) hookState(status string) specs.State {
	return specs.State{
		Version: specs.Version, ID: r.ID, Status: specs.ContainerState(status),
		Pid: r.Supervisor.PID, Bundle: r.Bundle, Annotations: r.Annotations,
	}
}
