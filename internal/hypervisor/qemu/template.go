package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// VM templates. A template is a VM booted until its agent answers, then
// saved: its RAM lives in a file of the template directory
// (memory-backend-file, share=on), and QEMU's migration stream, with the
// capability x-ignore-shared so that the shared RAM is not copied into it,
// goes to the state file beside it. A clone starts QEMU with the same
// machine and devices and -incoming defer, maps the template RAM (a private
// copy mapped shared, or the template file itself mapped copy-on-write),
// reads the state file with migrate-incoming and lets the vCPUs run.
//
// The stream goes through a descriptor the driver opens and passes over
// the monitor (fd:NAME), not exec:, which needs a shell that QEMU's
// seccomp filter (spawn=deny) refuses: QEMU 7.2 dies with "Bad system call"
// at migrate exec:cat > FILE. vhost-user-fs cannot be migrated, so template
// and clones reserve PCIe root ports for virtio-fs, which a clone hot-adds
// once it runs.

// Files of a template directory.
const (
	templateMemoryName = "memory"
	templateStateName  = "state"
)

// cloneMemoryName names a private clone's copy of the template RAM: a
// memfd (shown as /memfd:hull-ram in QEMU's maps), which no path on the
// host names. cloneMemoryFile is the name an earlier version gave the copy
// in the state directory, removed with the state files.
const (
	cloneMemoryName = "hull-ram"
	cloneMemoryFile = "memory"
)

// agentPortID is the device ID of the agent's virtio-serial port in
// template and clone VMs.
const agentPortID = "agent-port"

// templateFSPorts is how many virtio-fs shares a clone can hot-add (the
// sandbox uses one).
const templateFSPorts = 1

// restoreTimeout bounds loading a template's state when the caller's ctx
// allows longer.
const restoreTimeout = time.Minute

// snapshotTimeout bounds Snapshot (the guest's reopen of the agent port and
// the save) when the caller's ctx allows longer: a guest that never
// reopens its port must not hold the caller forever. A variable for tests.
var snapshotTimeout = 2 * time.Minute

func fsPortID(i uint32) string { return fmt.Sprintf("fsport%d", i) }

// ramFile returns the guest RAM file of a template or clone VM and whether
// QEMU maps it shared. A private clone's is the memfd QEMU inherits as its
// descriptor ramFD (privateClone).
func ramFile(cfg *hypervisor.Config, ramFD int) (string, bool) {
	t := cfg.Template
	switch {
	case !t.Restore:
		return filepath.Join(t.Dir, templateMemoryName), true
	case t.Memory == hypervisor.TemplateMemoryShared:
		// Copy-on-write: the guest never writes the template.
		return filepath.Join(t.Dir, templateMemoryName), false
	default:
		return fmt.Sprintf("/proc/self/fd/%d", ramFD), true
	}
}

// privateClone reports whether cfg is a clone with a private copy of its
// template's RAM.
func privateClone(cfg *hypervisor.Config) bool {
	t := cfg.Template
	return t != nil && t.Restore && t.Memory != hypervisor.TemplateMemoryShared
}

// templateBootFilesystems are the virtio-fs devices on QEMU's command line:
// none in a template or clone (a clone hot-adds them).
func templateBootFilesystems(cfg *hypervisor.Config) []hypervisor.FilesystemDevice {
	if cfg.Template != nil {
		return nil
	}
	return cfg.Filesystems
}

// TemplateBoot describes how the driver itself boots a template of vc
// with options o, beyond vc and the options: the firmware it passes (-bios;
// "default" is QEMU's own, SeaBIOS on q35) and the kernel parameters it adds
// before vc.KernelParams. A saved state holds a guest booted so, so
// template keys name it (internal/launch): a driver that boots templates
// otherwise gets new keys. AccelAuto adds no TSC parameters here, as the
// accelerator is resolved only at a VM's start.
func TemplateBoot(o Options, vc hypervisor.Config) string {
	if vc.Template == nil {
		vc.Template = &hypervisor.Template{}
	}
	vc.KernelParams = nil
	l := o.layout()
	bios := "default"
	if usesQboot(&vc, l) {
		bios = qbootFile
	}
	return fmt.Sprintf("bios=%s append=%s", bios, strings.Join(kernelParams(&vc, l), " "))
}

// validateTemplate checks Config.Template; validate calls it.
func validateTemplate(cfg *hypervisor.Config, o *Options) error {
	t := cfg.Template
	if t == nil {
		return nil
	}
	inval := func(format string, args ...any) error {
		return fmt.Errorf("qemu: template: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if o.Machine != MachineQ35 {
		return fmt.Errorf("qemu: template: the %s machine cannot hot-add virtio-fs after a restore: %w", o.Machine, errdefs.ErrNotImplemented)
	}
	if !filepath.IsAbs(t.Dir) || filepath.Clean(t.Dir) != t.Dir {
		return inval("directory %q is not a clean absolute path", t.Dir)
	}
	if cfg.Agent.Transport != hypervisor.TransportSerial {
		return inval("agent transport %q: templates use the serial transport", cfg.Agent.Transport)
	}
	switch t.Memory {
	case "":
		t.Memory = hypervisor.TemplateMemoryPrivate
	case hypervisor.TemplateMemoryPrivate, hypervisor.TemplateMemoryShared:
	default:
		return inval("memory mode %q: want %q or %q", t.Memory, hypervisor.TemplateMemoryPrivate, hypervisor.TemplateMemoryShared)
	}
	if !t.Restore && len(cfg.Filesystems) > 0 {
		return inval("a template VM has no virtio-fs share (clones add theirs)")
	}
	if len(cfg.Networks) > 0 {
		// A clone must have its template's devices, and a template has
		// no pod NIC: QEMU refuses the state, or the guest never sees
		// the NIC.
		return fmt.Errorf("qemu: template: %d NICs at boot: a template has none, a clone must hot-add them: %w", len(cfg.Networks), errdefs.ErrNotImplemented)
	}
	if len(cfg.Filesystems) > templateFSPorts {
		return inval("%d virtio-fs shares: a clone takes at most %d", len(cfg.Filesystems), templateFSPorts)
	}
	if t.Restore && t.Memory == hypervisor.TemplateMemoryShared && o.FreePageReporting {
		// QEMU 7.2 discards a reported page of file-backed RAM by
		// punching a hole in the file, even in a private mapping: the
		// guest would erase pages of the template itself.
		return inval("free page reporting would punch holes in the template's memory file; a shared clone needs a template without it")
	}
	if t.Restore && t.Memory == hypervisor.TemplateMemoryShared && len(cfg.Filesystems) > 0 {
		return inval("virtio-fs needs guest RAM mapped shared; the shared template memory mode maps it copy-on-write")
	}
	return nil
}

// checkTemplateDir checks that dir is a directory itself (not a symbolic
// link) that only its owner, root, can write.
func checkTemplateDir(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("template dir: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok {
		return fmt.Errorf("template dir %s is not a directory: %w", dir, errdefs.ErrInvalidArgument)
	}
	if st.Mode().Perm()&0o022 != 0 || int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("template dir %s: owned by uid %d with mode %v, want ours and not group or world writable: %w",
			dir, sys.Uid, st.Mode().Perm(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// prepareTemplateRAM makes the RAM file a template or clone VM maps before
// QEMU starts: a fresh file in the template directory for a template; for
// a private clone, a copy of the template's in a memfd (copied in the VM's
// cgroup cg), which it returns for QEMU to inherit. It returns the undo
// step.
func (v *VM) prepareTemplateRAM(ctx context.Context, cg *vmCgroup) (*os.File, func(), error) {
	t := v.cfg.Template
	if err := checkTemplateDir(t.Dir); err != nil {
		return nil, nil, err
	}
	size := int64(v.cfg.MemoryMiB) << 20
	src := filepath.Join(t.Dir, templateMemoryName)
	if !t.Restore {
		f, err := os.OpenFile(src, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("template memory: %w", err)
		}
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(src)
			return nil, nil, fmt.Errorf("template memory: %w", err)
		}
		return nil, func() { _ = os.Remove(src) }, nil
	}
	for _, name := range []string{templateMemoryName, templateStateName} {
		st, err := os.Lstat(filepath.Join(t.Dir, name))
		if err != nil {
			return nil, nil, fmt.Errorf("template: %w: %w", err, errdefs.ErrNotFound)
		}
		if !st.Mode().IsRegular() {
			return nil, nil, fmt.Errorf("template %s is not a regular file: %w", name, errdefs.ErrInvalidArgument)
		}
		if name == templateMemoryName && st.Size() != size {
			return nil, nil, fmt.Errorf("template memory is %d bytes, the vm has %d: %w", st.Size(), size, errdefs.ErrInvalidArgument)
		}
	}
	if t.Memory == hypervisor.TemplateMemoryShared {
		return nil, func() {}, nil
	}
	ram, err := copyToMemfd(ctx, src, size, cg)
	if err != nil {
		return nil, nil, fmt.Errorf("copying the template memory: %w", err)
	}
	return ram, func() { _ = ram.Close() }, nil
}

// copyToMemfd copies the template RAM file src, of size bytes, into a new
// memfd, sparse: only the data the template's guest wrote takes memory.
// The memfd lives in memory whatever file system holds the state
// directory (no write-back of guest RAM to a disk, none to wait for when
// the VM ends) and goes away with its last descriptor and mapping: nothing
// to remove after a crash. The copy runs in cg (copyInCgroup), so that its
// pages are charged to the VM.
func copyToMemfd(ctx context.Context, src string, size int64, cg *vmCgroup) (*os.File, error) {
	fd, err := unix.MemfdCreate(cloneMemoryName, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	ram := os.NewFile(uintptr(fd), "memfd:"+cloneMemoryName)
	if err := copyInCgroup(ctx, src, ram, cg); err != nil {
		_ = ram.Close()
		return nil, err
	}
	st, err := ram.Stat()
	if err == nil && st.Size() != size {
		err = fmt.Errorf("the copy is %d bytes, the template %d: %w", st.Size(), size, errdefs.ErrUnknown)
	}
	if err != nil {
		_ = ram.Close()
		return nil, err
	}
	return ram, nil
}

// restoreTimes are how long the parts of a clone's start took, for its
// log line.
type restoreTimes struct {
	// ramCopy is the making of the RAM file (a private clone's copy of
	// the template's), ramCopied the bytes the copy holds (its allocated
	// blocks: the data the template's guest wrote).
	ramCopy   time.Duration
	ramCopied int64
	// monitor is QEMU's launch until its monitor answered.
	monitor time.Duration
	// migration is the state's load until the vCPUs run; filesystems the
	// hot-add of the virtio-fs shares.
	migration, filesystems time.Duration
}

func (rt restoreTimes) fields() log.Fields {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return log.Fields{
		"ram_copy_ms":    ms(rt.ramCopy),
		"ram_copied_mib": rt.ramCopied >> 20,
		"monitor_ms":     ms(rt.monitor),
		"migration_ms":   ms(rt.migration),
		"virtiofs_ms":    ms(rt.filesystems),
	}
}

// allocatedBytes is the data f holds (its allocated blocks), 0 when it
// cannot be read.
func allocatedBytes(f *os.File) int64 {
	var st unix.Stat_t
	if f == nil || unix.Fstat(int(f.Fd()), &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// copyInCgroup copies the file src into dst (truncated first), sparse (cp
// --sparse=always: a template's RAM file holds data only where its guest
// wrote), in a process placed in the VM's cgroup: the pages of the copy,
// which QEMU then maps as guest RAM, are charged to the VM, not to the
// runtime. cp writes dst through its descriptor 3 (/proc/self/fd/3): no path
// names it.
func copyInCgroup(ctx context.Context, src string, dst *os.File, cg *vmCgroup) error {
	cp, err := exec.LookPath("cp")
	if err != nil {
		return err
	}
	out := &child.TailBuffer{Max: 4 << 10}
	cmd := &exec.Cmd{Path: cp, Args: []string{"cp", "--sparse=always", "--", src, "/proc/self/fd/3"}, Stdout: out, Stderr: out, ExtraFiles: []*os.File{dst}}
	done := make(chan error, 1)
	if _, err := child.StartIn(cmd, nil, cg.g, func(ps *os.ProcessState, err error) {
		if err == nil && !ps.Success() {
			err = fmt.Errorf("cp: %s: %s", ps, strings.TrimSpace(out.String()))
		}
		done <- err
	}); err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return errors.Join(ctx.Err(), <-done)
	}
}

// restore loads a clone's state from its template over q (QEMU waits with
// -incoming defer), starts the vCPUs and hot-adds the virtio-fs shares.
// used says whether it got as far as the shares: a virtio-fs daemon serves
// one connection, and a failure from there on may have used it up.
func (v *VM) restore(ctx context.Context, q *qmpConn, rt *restoreTimes) (used bool, _ error) {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	began := time.Now()
	if err := setIgnoreShared(ctx, q); err != nil {
		return false, err
	}
	f, err := os.OpenFile(filepath.Join(v.cfg.Template.Dir, templateStateName), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("template state: %w", err)
	}
	defer func() { _ = f.Close() }()
	if _, err := q.executeFD(ctx, "getfd", map[string]any{"fdname": "migin"}, int(f.Fd())); err != nil {
		return false, err
	}
	if _, err := q.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:migin"}); err != nil {
		return false, err
	}
	if err := waitMigration(ctx, q); err != nil {
		return false, fmt.Errorf("loading the template state: %w", err)
	}
	if _, err := q.execute(ctx, "cont", nil); err != nil {
		return false, err
	}
	rt.migration = time.Since(began)
	began = time.Now()
	defer func() { rt.filesystems = time.Since(began) }()
	for i, fs := range v.cfg.Filesystems {
		if err := addFilesystem(ctx, q, fs, fmt.Sprintf("fs%d", i), fsPortID(uint32(i))); err != nil {
			return true, fmt.Errorf("adding virtio-fs %q: %w", fs.Tag, err)
		}
	}
	return len(v.cfg.Filesystems) > 0, nil
}

// addFilesystem hot-adds a vhost-user-fs device and its socket chardev
// into a reserved root port.
func addFilesystem(ctx context.Context, q *qmpConn, fs hypervisor.FilesystemDevice, id, port string) error {
	qs := fs.QueueSize
	if qs == 0 {
		qs = 1024
	}
	backend := map[string]any{"type": "socket", "data": map[string]any{
		"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": fs.SocketPath}},
		"server": false,
	}}
	if _, err := q.execute(ctx, "chardev-add", map[string]any{"id": id, "backend": backend}); err != nil {
		return err
	}
	dev := map[string]any{"driver": "vhost-user-fs-pci", "id": id, "chardev": id, "tag": fs.Tag, "queue-size": qs, "bus": port}
	if _, err := q.execute(ctx, "device_add", dev); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if _, rerr := q.execute(rctx, "chardev-remove", map[string]any{"id": id}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("undoing chardev-add: %w", rerr))
		}
		return err
	}
	return nil
}

func setIgnoreShared(ctx context.Context, q *qmpConn) error {
	_, err := q.execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	})
	return err
}

// migrationPoll is how often waitMigration asks QEMU.
const migrationPoll = 20 * time.Millisecond

// waitMigration polls query-migrate until the migration completed, failed
// or ctx is done.
func waitMigration(ctx context.Context, q *qmpConn) error {
	for {
		raw, err := q.execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s: %w", st.Status, st.ErrorDesc, errdefs.ErrUnknown)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration %s: %w", st.Status, ctx.Err())
		case <-time.After(migrationPoll):
		}
	}
}

// agentPortEvent notes a VSERPORT_CHANGE of the agent's port: the guest
// opened or closed it.
func (v *VM) agentPortEvent(data json.RawMessage) {
	var d struct {
		ID   string `json:"id"`
		Open bool   `json:"open"`
	}
	if json.Unmarshal(data, &d) != nil || d.ID != agentPortID {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if d.Open {
		v.agentPortOpens++
	}
	v.agentPortOpen = d.Open
}

// agentReopened reports whether the guest opened the agent's port again
// since its first open at boot and has it open: the agent, which opens the
// port afresh for each host session, ended the host's session and waits
// for a new one. (The guest's close of the old descriptor does not always
// show as an event before the new open.)
func (v *VM) agentReopened() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.agentPortOpens > 1 && v.agentPortOpen
}

// Snapshot saves a template VM into its template directory and ends it
// (see hypervisor.Snapshotter). The agent must have had a host session
// that the caller closed: the guest is saved once the agent has closed
// and reopened its port, so a clone's agent waits for a new host, and the
// virtio-serial state holds no half-read session.
func (v *VM) Snapshot(ctx context.Context) (retErr error) {
	t := v.cfg.Template
	if t == nil || t.Restore {
		return fmt.Errorf("vm %s is not a template: %w", v.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	v.mu.Lock()
	st, q := v.state, v.qmp
	v.mu.Unlock()
	switch st {
	case stateRunning:
	case stateExited, stateStopped:
		return fmt.Errorf("vm %s: snapshot: %w", v.cfg.ID, hypervisor.ErrVMExited)
	default:
		return fmt.Errorf("vm %s is %s, not running: %w", v.cfg.ID, st, errdefs.ErrFailedPrecondition)
	}
	ctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()
	tmp := filepath.Join(t.Dir, templateStateName+".tmp")
	defer func() {
		if retErr != nil {
			_ = os.Remove(tmp)
			retErr = fmt.Errorf("vm %s: snapshot: %w", v.cfg.ID, retErr)
		}
		if err := v.Stop(context.WithoutCancel(ctx)); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	for !v.agentReopened() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the agent to end the host session: %w", ctx.Err())
		case <-v.done:
			return hypervisor.ErrVMExited
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := v.Pause(ctx); err != nil {
		return err
	}
	if err := setIgnoreShared(ctx, q); err != nil {
		return err
	}
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	if _, err := q.executeFD(ctx, "getfd", map[string]any{"fdname": "migout"}, int(f.Fd())); err != nil {
		return err
	}
	if _, err := q.execute(ctx, "migrate", map[string]any{"uri": "fd:migout"}); err != nil {
		return err
	}
	if err := waitMigration(ctx, q); err != nil {
		return fmt.Errorf("saving the state: %w", err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(t.Dir, templateStateName)); err != nil {
		return err
	}
	log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "dir": t.Dir}).Info("template saved")
	return nil
}
