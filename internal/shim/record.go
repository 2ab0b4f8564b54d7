package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hull-runtime/hull/internal/atomicfile"
)

// recordName is the file in a container's bundle that tells `shim delete`,
// run after the shim died, which sandbox to clean up. containerd removes the
// bundle after the delete.
const recordName = "hull-sandbox.json"

// record names the sandbox of a container.
type record struct {
	// SandboxID is the pod's ID (the sandbox container's), as containerd
	// names it.
	SandboxID string `json:"sandbox_id"`
	// VMID is the sandbox's ID on the host: the pod's ID qualified by its
	// containerd namespace (vmID). Records written before it existed have
	// none: their sandbox is named by SandboxID alone.
	VMID      string `json:"vm_id,omitempty"`
	StateRoot string `json:"state_root"`
	// WarmID is the ID of the warm sandbox (WithWarmSandbox) that the
	// shim adopts for the pod: a shim that dies during the adoption,
	// before the sandbox takes the pod's ID, leaves it under this one.
	WarmID string `json:"warm_id,omitempty"`
}

// hostID is the ID the record's sandbox has on the host.
func (r record) hostID() string {
	if r.VMID != "" {
		return r.VMID
	}
	return r.SandboxID
}

// vmID is the host-side ID of the sandbox of pod podID in containerd
// namespace ns: "<podID>@<ns>". Two namespaces may use the same container
// IDs; their VMs, state directories and cgroups must not meet. '@' is in
// neither a namespace nor a container ID (containerd's identifiers).
func vmID(ns, podID string) string {
	if ns == "" {
		return podID
	}
	return podID + "@" + ns
}

// writeRecord writes the record into the bundle; it is written before the
// sandbox starts so that a shim that dies while starting it is cleaned up.
func writeRecord(bundle string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(bundle, recordName), b); err != nil {
		return fmt.Errorf("writing %s: %w", recordName, err)
	}
	return nil
}

// readRecord reads a bundle's record; ok is false when there is none (the
// shim died before the container was created).
func readRecord(bundle string) (r record, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(bundle, recordName))
	if errors.Is(err, os.ErrNotExist) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return record{}, false, fmt.Errorf("reading %s: %w", recordName, err)
	}
	return r, true, nil
}
