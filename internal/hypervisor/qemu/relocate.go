package qemu

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// MoveStateDir runs rename, which renames the VM's state directory to dir,
// with the console log's writes held, and then knows the VM's files below
// dir: the monitor and console sockets, the pid file, the agent's socket
// and the virtio-fs sockets that were below the old directory. QEMU keeps
// its bound sockets and open files; at its exit it may fail to unlink its
// pid file by the old path, which Stop then removes.
func (v *VM) MoveStateDir(dir string, rename func() error) error {
	v.stopMu.Lock()
	defer v.stopMu.Unlock()
	v.mu.Lock()
	st, lg, old := v.state, v.consoleLog, v.cfg.StateDir
	v.mu.Unlock()
	if err := v.runningFor("move its state directory", st); err != nil {
		return err
	}
	if err := child.MoveLogs(old, dir, rename, lg); err != nil {
		return fmt.Errorf("vm %s: moving its state directory: %w", v.cfg.ID, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.cfg.StateDir = dir
	v.cfg.Agent.SocketPath = child.Rebase(v.cfg.Agent.SocketPath, old, dir)
	fss := append([]hypervisor.FilesystemDevice(nil), v.cfg.Filesystems...)
	for i := range fss {
		fss[i].SocketPath = child.Rebase(fss[i].SocketPath, old, dir)
	}
	v.cfg.Filesystems = fss
	return nil
}

// MoveCgroup moves QEMU, with all its threads, into the existing cgroup at
// path, which the caller owns; the driver's own cgroup that held it, if
// any, is removed.
func (v *VM) MoveCgroup(path string) error {
	v.stopMu.Lock()
	defer v.stopMu.Unlock()
	v.mu.Lock()
	st, pid, old := v.state, v.pid, v.cgroup
	v.mu.Unlock()
	if err := v.runningFor("move its cgroup", st); err != nil {
		return err
	}
	cg, err := newCgroup(path, "")
	if err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	if err := cg.g.AddTree(pid); err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	v.mu.Lock()
	v.cgroup = cg
	v.mu.Unlock()
	if old != nil {
		if err := old.delete(); err != nil {
			return fmt.Errorf("vm %s: removing its previous cgroup: %w", v.cfg.ID, err)
		}
	}
	return nil
}

// runningFor refuses what needs a running (or paused) VM.
func (v *VM) runningFor(what string, st state) error {
	switch st {
	case stateRunning, statePaused:
		return nil
	case stateExited, stateStopped:
		return fmt.Errorf("vm %s: %s: %w", v.cfg.ID, what, hypervisor.ErrVMExited)
	}
	return fmt.Errorf("vm %s is %s: %s: %w", v.cfg.ID, st, what, errdefs.ErrFailedPrecondition)
}
