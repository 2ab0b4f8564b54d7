package sandbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/netpod"
	"github.com/hull-runtime/hull/internal/storage"
)

// recordName is the file in the state directory that tells Cleanup what a
// runtime that died left running.
const recordName = "sandbox.json"

// cgroupBusyWait bounds the wait for a killed VM's cgroup to empty.
const cgroupBusyWait = 10 * time.Second

// record is what Cleanup needs to know of a sandbox whose runtime is gone.
type record struct {
	ID          string `json:"id"`
	VMPID       int    `json:"vm_pid,omitempty"`
	VirtiofsPID int    `json:"virtiofsd_pid,omitempty"`
	// NetNS is the pod network namespace mirrored into the VM.
	NetNS string `json:"netns,omitempty"`
	// Cgroup is the cgroup path below the cgroup root(s) that Cleanup
	// removes: the sandbox's when the sandbox made it, else the VM
	// driver's own; empty when the runtime made none (a pod cgroup that
	// existed is not the runtime's to remove).
	Cgroup string `json:"cgroup,omitempty"`
}

func (s *Sandbox) record() record {
	d := s.vm.Describe()
	r := record{ID: s.id, VMPID: d.PID, Cgroup: d.Cgroup, NetNS: s.netnsPath}
	if s.cgroup != nil {
		r.Cgroup = ""
		if s.cgroup.g.Created() {
			r.Cgroup = s.cgroup.g.Path()
		}
	}
	if s.virtiofs != nil {
		r.VirtiofsPID = s.virtiofs.PID()
	}
	return r
}

func writeRecord(dir string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, recordName+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing sandbox record: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, recordName))
}

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

// Cleanup removes what a sandbox whose runtime died left behind: it kills
// the processes that run for the sandbox (the hypervisor, virtiofsd and
// its helpers, found by the record in the state directory, the pid files
// there, and any process whose command line names the state directory),
// unmounts and removes the shared storage, removes the VM's cgroup and the
// state directory. A sandbox that left nothing is no error.
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
		if e.IsDir() {
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
	pids := map[int]bool{}
	for _, pid := range []int{r.VMPID, r.VirtiofsPID} {
		if pid > 0 && mentions(pid, dir) {
			pids[pid] = true
		}
	}
	pidFiles, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, f := range pidFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 && mentions(pid, dir) {
			pids[pid] = true
		}
	}
	for _, pid := range processesMentioning(dir) {
		pids[pid] = true
	}
	for pid := range pids {
		logger.WithField("pid", pid).Info("killing a leftover sandbox process")
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("killing pid %d: %w", pid, err))
		}
	}
	for pid := range pids {
		if !waitGone(ctx, pid, 5*time.Second) {
			errs = append(errs, fmt.Errorf("pid %d did not die: %w", pid, errdefs.ErrUnavailable))
		}
	}
	if _, err := os.Stat(dir); err == nil {
		errs = append(errs, storage.Cleanup(ctx, dir))
		errs = append(errs, os.RemoveAll(dir))
	}
	if r.Cgroup != "" {
		errs = append(errs, removeCgroup(r.Cgroup))
	}
	if r.NetNS != "" {
		errs = append(errs, netpod.Cleanup(ctx, r.NetNS))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleaning up sandbox %s: %w", name, err)
	}
	return nil
}

// mentions reports whether pid's command line contains dir: a pid from a
// file is killed only when it still is the process that wrote it.
func mentions(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte(dir+"/"))
}

// processesMentioning lists the processes whose command line names a path
// under dir.
func processesMentioning(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if mentions(pid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitGone waits until pid has exited (or is a zombie someone else reaps).
func waitGone(ctx context.Context, pid int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 0 && f[0] == "Z" {
				return true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeCgroup removes an empty cgroup on the v2 hierarchy or on every v1
// hierarchy that has it.
func removeCgroup(rel string) error {
	rel = filepath.Join("/", rel)
	if rel == "/" {
		return nil
	}
	roots := []string{"/sys/fs/cgroup"}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		entries, _ := os.ReadDir("/sys/fs/cgroup")
		roots = roots[:0]
		for _, e := range entries {
			roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	var errs []error
	for _, root := range roots {
		dir := filepath.Join(root, rel)
		// A killed process leaves its cgroup a moment after it is seen
		// dead: retry while the group is busy.
		deadline := time.Now().Add(cgroupBusyWait)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}
