package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/atomicfile"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/netpod"
	"github.com/hull-runtime/hull/internal/startcount"
	"github.com/hull-runtime/hull/internal/storage"
)

// recordName is the file in the state directory that tells Cleanup what a
// runtime that died left running.
const recordName = "sandbox.json"

// record is what Cleanup needs to know of a sandbox whose runtime is gone:
// what the sandbox's parts created, each named by its owner (the VM driver
// its process and cgroup, virtiofsd its process, the network its
// namespace), and nothing else is released. A process is named by its PID
// with its start time, recorded when it was started, so that a PID reused
// by an unrelated process is never killed.
type record struct {
	ID    string `json:"id"`
	VMPID int    `json:"vm_pid,omitempty"`
	// VMStartTime is the VM process's start time (/proc/<pid>/stat
	// field 22); a process without one is never killed.
	VMStartTime       uint64 `json:"vm_start_time,omitempty"`
	VirtiofsPID       int    `json:"virtiofsd_pid,omitempty"`
	VirtiofsStartTime uint64 `json:"virtiofsd_start_time,omitempty"`
	// NetNS is the pod network namespace mirrored into the VM.
	NetNS string `json:"netns,omitempty"`
	// Cgroup is the cgroup path below the cgroup root(s) that Cleanup
	// removes: the sandbox's when the sandbox made it, else the VM
	// driver's own; empty when the runtime made none (a pod cgroup that
	// existed is not the runtime's to remove).
	Cgroup string `json:"cgroup,omitempty"`
	// CgroupUnit is the systemd scope that holds Cgroup, which Cleanup
	// stops; empty when the runtime made the cgroup itself.
	CgroupUnit string `json:"cgroup_unit,omitempty"`
}

func (s *Sandbox) record() record {
	s.mu.Lock()
	r := record{ID: s.id, NetNS: s.netnsPath}
	s.mu.Unlock()
	if s.vm != nil {
		d := s.vm.Describe()
		r.VMPID, r.VMStartTime, r.Cgroup = d.PID, d.StartTime, d.Cgroup
	}
	if s.cgroup != nil {
		r.Cgroup = ""
		if s.cgroup.g.Created() {
			r.Cgroup, r.CgroupUnit = s.cgroup.g.Path(), s.cgroup.g.Unit().Name
		}
	}
	if s.virtiofs != nil {
		p := s.virtiofs.Process()
		r.VirtiofsPID, r.VirtiofsStartTime = p.PID, p.StartTime
	}
	return r
}

// processes are the processes the record names.
func (r record) processes() map[string]child.Process {
	return map[string]child.Process{
		"vm":        {PID: r.VMPID, StartTime: r.VMStartTime},
		"virtiofsd": {PID: r.VirtiofsPID, StartTime: r.VirtiofsStartTime},
	}
}

func writeRecord(dir string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, recordName), b); err != nil {
		return fmt.Errorf("writing sandbox record: %w", err)
	}
	return nil
}

// bootSlotsName is the directory under a state root that holds the node's
// boot slots (package bootslot); no sandbox may take its name.
const bootSlotsName = ".boot-slots"

// BootSlotsDir is where the runtimes sharing stateRoot keep their boot
// slots.
func BootSlotsDir(stateRoot string) string { return filepath.Join(stateRoot, bootSlotsName) }

// IsNodeState says whether name, an entry of a state root, is node-wide
// state that belongs to no sandbox and outlives them all: the boot slots
// and the start counts (package startcount).
func IsNodeState(name string) bool { return name == bootSlotsName || name == startcount.Name }

// maxPlainDirName is the longest sandbox ID used as its state directory's
// name as it is. Longer IDs get a hashed name of one byte more, so that a
// hashed name never equals a plain one.
const maxPlainDirName = 31

// StateDir is the state directory of sandbox id under stateRoot. The
// directory holds unix sockets (QEMU's monitor and agent port, virtiofsd's),
// whose paths may have at most 107 bytes; with the 64 characters of a CRI pod
// ID in the path, only a state root of up to 28 bytes would do. So an ID
// longer than 31 bytes is named by a hash instead: "h-" and 30 hex digits of
// its SHA-256 (120 bits). The sandbox record inside names the full ID.
func StateDir(stateRoot, id string) string {
	if len(id) <= maxPlainDirName {
		return filepath.Join(stateRoot, id)
	}
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(stateRoot, "h-"+hex.EncodeToString(sum[:15]))
}

// Find returns the state directory and full ID of the sandbox named id
// under stateRoot: the sandbox of that ID, or else the only one whose ID is
// id qualified by a containerd namespace ("<id>@<namespace>", as the shim
// names its sandboxes). Sandboxes are known by their records.
func Find(stateRoot, id string) (dir, fullID string, err error) {
	if err := errors.Join(locationErrors(id, stateRoot)...); err != nil {
		return "", "", fmt.Errorf("finding sandbox: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	readID := func(dir string) string {
		var r record
		b, err := os.ReadFile(filepath.Join(dir, recordName))
		if err != nil || json.Unmarshal(b, &r) != nil {
			return ""
		}
		return r.ID
	}
	if d := StateDir(stateRoot, id); readID(d) == id {
		return d, id, nil
	}
	ents, err := os.ReadDir(stateRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("finding sandbox %s: %w", id, err)
	}
	var dirs, ids []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		d := filepath.Join(stateRoot, e.Name())
		if rid := readID(d); strings.HasPrefix(rid, id+"@") {
			dirs, ids = append(dirs, d), append(ids, rid)
		}
	}
	switch len(dirs) {
	case 0:
		return "", "", fmt.Errorf("no sandbox %s under %s: %w", id, stateRoot, errdefs.ErrNotFound)
	case 1:
		return dirs[0], ids[0], nil
	}
	return "", "", fmt.Errorf("%s names several sandboxes (%s); give the full ID: %w", id, strings.Join(ids, ", "), errdefs.ErrInvalidArgument)
}

// Cleanup removes what a sandbox whose runtime died left behind, as the
// record in its state directory names it: it kills the recorded processes
// (the hypervisor and virtiofsd, each with its process group) that still
// run with their recorded start time, unmounts and removes the shared
// storage, removes the VM's cgroup and the state directory; the directory
// stays, with an error, while anything below it is still mounted. A
// sandbox that left nothing is no error.
func Cleanup(ctx context.Context, stateRoot, id string) error {
	if err := errors.Join(locationErrors(id, stateRoot)...); err != nil {
		return fmt.Errorf("cleaning up sandbox: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return cleanupDir(ctx, StateDir(stateRoot, id), id)
}

// CleanupAll cleans up, as Cleanup does, every sandbox whose state directory
// is under stateRoot: a sweep after the runtime died (and for tests).
func CleanupAll(ctx context.Context, stateRoot string) error {
	if !filepath.IsAbs(stateRoot) {
		return fmt.Errorf("cleaning up sandboxes: state root %q is not absolute: %w", stateRoot, errdefs.ErrInvalidArgument)
	}
	ents, err := os.ReadDir(stateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleaning up sandboxes: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() && !IsNodeState(e.Name()) {
			errs = append(errs, cleanupDir(ctx, filepath.Join(stateRoot, e.Name()), e.Name()))
		}
	}
	return errors.Join(errs...)
}

// cleanupDir is Cleanup of the sandbox whose state directory is dir; name
// names it in logs and errors until its record says its ID.
func cleanupDir(ctx context.Context, dir, name string) error {
	var r record
	if b, err := os.ReadFile(filepath.Join(dir, recordName)); err == nil {
		if err := json.Unmarshal(b, &r); err != nil {
			log.G(ctx).WithField("sandbox", name).WithError(err).Warn("unreadable sandbox record")
		}
	} else if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	if r.ID != "" {
		name = r.ID
	}
	logger := log.G(ctx).WithField("sandbox", name)

	var errs []error
	var killed []child.Process
	for name, p := range r.processes() {
		if p.PID <= 0 {
			continue
		}
		if p.StartTime == 0 {
			logger.WithField("pid", p.PID).Warnf("recorded %s process has no start time; left alone", name)
			continue
		}
		ok, err := p.Kill()
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			logger.WithField("pid", p.PID).Infof("killed the leftover %s process", name)
			killed = append(killed, p)
		}
	}
	for _, p := range killed {
		if !waitGone(ctx, p, 5*time.Second) {
			errs = append(errs, fmt.Errorf("pid %d did not die: %w", p.PID, errdefs.ErrUnavailable))
		}
	}
	if r.Cgroup != "" {
		errs = append(errs, removeCgroup(r.Cgroup, r.CgroupUnit))
	}
	if r.NetNS != "" {
		errs = append(errs, netpod.Cleanup(ctx, r.NetNS))
	}
	// The directory holds the record: it goes last, so that a cleanup
	// cut short leaves the record for the next one.
	if _, err := os.Stat(dir); err == nil {
		if err := storage.Cleanup(ctx, dir); err != nil {
			errs = append(errs, err, fmt.Errorf("keeping %s: its storage was not released", dir))
		} else {
			errs = append(errs, removeTreeIfUnmounted(dir))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleaning up sandbox %s: %w", name, err)
	}
	return nil
}

// waitGone waits until p no longer runs (it exited, or is a zombie that
// someone else reaps).
func waitGone(ctx context.Context, p child.Process, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for p.Running() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// removeCgroup removes the cgroup a sandbox record names, stopping the
// systemd scope that holds it if any: the runtime made it, and its
// processes are gone.
func removeCgroup(path, unit string) error {
	fs, err := hostcgroup.Host()
	if err != nil {
		return err
	}
	g, err := hostcgroup.Recorded(fs, path, unit)
	if err != nil {
		return err
	}
	return g.Delete()
}

// Entry is a sandbox found under a state root by its record.
type Entry struct {
	// ID is the sandbox's ID and Dir its state directory.
	ID, Dir string
	// VM is the hypervisor process as recorded when it started.
	VM child.Process
}

// List returns the sandboxes under stateRoot that have a record (those
// whose VM started), in state directory order.
func List(stateRoot string) ([]Entry, error) {
	ents, err := os.ReadDir(stateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing sandboxes: %w", err)
	}
	var out []Entry
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(stateRoot, e.Name())
		var r record
		b, err := os.ReadFile(filepath.Join(dir, recordName))
		if err != nil || json.Unmarshal(b, &r) != nil || r.ID == "" {
			continue
		}
		out = append(out, Entry{ID: r.ID, Dir: dir, VM: child.Process{PID: r.VMPID, StartTime: r.VMStartTime}})
	}
	return out, nil
}
