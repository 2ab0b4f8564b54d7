package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// startTimeout bounds how long QEMU may take to open its monitor when the
// caller's ctx allows longer.
const startTimeout = 10 * time.Second

// killWait bounds the wait for a SIGKILLed QEMU to be reaped.
const killWait = 10 * time.Second

// cleanup is a stack of undo steps, run last first.
type cleanup []func()

func (c *cleanup) push(f func()) { *c = append(*c, f) }

func (c cleanup) run() {
	for i := len(c) - 1; i >= 0; i-- {
		c[i]()
	}
}

// Start launches QEMU with its vCPUs stopped (-S) in the VM's cgroup
// (started there on cgroup v2, moved there before anything else on v1),
// connects to its monitor and only then lets the guest run (QMP
// cont), so no guest instruction runs outside the cgroup. When any step
// fails, Start undoes the ones before: no process, cgroup or socket is left.
func (v *VM) Start(ctx context.Context) (retErr error) {
	v.stopMu.Lock()
	defer v.stopMu.Unlock()
	v.mu.Lock()
	if v.state != stateCreated {
		st := v.state
		v.mu.Unlock()
		return fmt.Errorf("starting vm %s: vm is %s: %w", v.cfg.ID, st, errdefs.ErrFailedPrecondition)
	}
	v.state = stateStarting
	v.mu.Unlock()

	var undo cleanup
	// A clone's start that fails before its restore hot-adds virtio-fs
	// has not used the virtio-fs daemon (which serves one connection):
	// its caller may boot a VM of the same companions (ErrRestoreFailed).
	companionsUnused := v.cfg.Template != nil && v.cfg.Template.Restore
	defer func() {
		if retErr != nil {
			undo.run()
			v.setState(stateStopped)
			if companionsUnused {
				retErr = fmt.Errorf("%w: %w", retErr, hypervisor.ErrRestoreFailed)
			}
			retErr = fmt.Errorf("starting vm %s: %w", v.cfg.ID, retErr)
		}
	}()
	logger := log.G(ctx).WithField("vm", v.cfg.ID)
	// A fallback to TCG must not go unnoticed: a KVM host would run its
	// guests many times slower.
	for _, w := range v.warnings {
		logger.Warn(w)
	}

	bin, err := lookBinary(v.opts.Binary)
	if err != nil {
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	if err := v.checkFiles(); err != nil {
		return err
	}
	v.removeStateFiles()
	undo.push(v.removeStateFiles)

	cg, err := newCgroup(v.cfg.Cgroup, v.cgroupPath())
	if err != nil {
		return err
	}
	undo.push(func() {
		if err := cg.delete(); err != nil {
			logger.WithError(err).Warn("start failed: cgroup left behind")
		}
	})

	// rt times a clone's restore, part by part, for the "qemu started" line.
	var rt restoreTimes
	// ram is a private clone's copy of the template RAM, which QEMU
	// inherits; the runtime's descriptor is closed when Start returns.
	var ram *os.File
	if v.cfg.Template != nil {
		began := time.Now()
		f, undoRAM, err := v.prepareTemplateRAM(ctx, cg)
		if err != nil {
			return err
		}
		undo.push(undoRAM)
		if f != nil {
			ram = f
			defer func() { _ = ram.Close() }()
		}
		rt.ramCopy = time.Since(began)
		rt.ramCopied = allocatedBytes(ram)
	}

	lg, err := child.OpenLog(v.consolePath(), v.opts.ConsoleMax)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	undo.push(func() { _ = lg.Close() })
	v.mu.Lock()
	v.consoleLog = lg
	v.mu.Unlock()

	l := v.layout
	if v.opts.RunAsUIDBase != 0 {
		lease, err := leaseUID(v.opts.RunAsUIDBase, v.opts.RunAsUIDCount)
		if err != nil {
			return err
		}
		v.mu.Lock()
		v.uid = lease
		v.mu.Unlock()
		undo.push(v.releaseUID)
		l.runAs = lease.uid
	}
	fds := extraFDs(&v.cfg)
	var vhost []*os.File
	switch {
	case netQueues(&v.cfg) == 0:
	case l.accel != AccelKVM:
		// Without KVM, QEMU has no ioeventfd and vhost-net cannot start.
		logger.Debug("qemu: pod NICs without vhost-net under TCG")
	case !child.BornIn(cg.g):
		// vhost-net's kernel worker joins QEMU's cgroups when QEMU sets it
		// up, before a move after the start could reach it: it would
		// carry the guest's packets outside the pod's cgroup.
		logger.Info("qemu: pod NICs without vhost-net: QEMU cannot be started in its cgroup here (cgroup v1, or no CLONE_INTO_CGROUP)")
	default:
		if vhost, err = vhostNetFiles(&v.cfg); err != nil {
			logger.WithError(err).Info("qemu: pod NICs without vhost-net")
		}
	}
	defer closeFiles(vhost)
	for _, f := range vhost {
		fds = append(fds, f.Fd())
	}
	l.vhostNet = len(vhost) > 0
	if ram != nil {
		// After the taps and vhost-net descriptors that buildArgs counts.
		l.ramFD = firstExtraFD + len(fds)
		fds = append(fds, ram.Fd())
	}
	if usesQboot(&v.cfg, l) {
		if l.firmwarePath, err = firmwarePath(bin, qbootFile); err != nil {
			return err
		}
	}
	args := buildArgs(&v.cfg, l)
	args[0] = bin
	if v.uid != nil {
		// QEMU inherits the lease (after the descriptors its argv counts),
		// so the ID stays taken for as long as QEMU lives, whatever
		// becomes of the runtime (see uidLease).
		fds = append(fds, uintptr(v.uid.fd))
	}
	extra, err := dupFiles(fds)
	if err != nil {
		return err
	}
	defer closeFiles(extra)
	out := &child.TailBuffer{Max: 16 << 10}
	cmd := &exec.Cmd{
		Path:       bin,
		Args:       args,
		Dir:        v.cfg.StateDir,
		Stdout:     out,
		Stderr:     out,
		ExtraFiles: extra,
		Env:        qemuEnv(os.Environ()),
	}
	if v.cfg.OwnNetNS {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	}
	logger.WithField("argv", strings.Join(args, " ")).Debug("starting qemu")
	launched := time.Now()
	if err := v.launch(cmd, cg); err != nil {
		return fmt.Errorf("running %s: %w", bin, err)
	}
	undo.push(func() {
		_ = cmd.Process.Kill()
		select {
		case <-v.done:
		case <-time.After(killWait):
			logger.Warn("start failed: qemu does not die")
		}
	})
	v.mu.Lock()
	v.binary = bin
	v.cgroup = cg
	v.mu.Unlock()

	exitedErr := func(step string, err error) error {
		select {
		case <-v.done:
		case <-time.After(time.Second):
		}
		select {
		case <-v.done:
			v.mu.Lock()
			e := v.exit
			v.mu.Unlock()
			output := qemuOutput(out.String())
			err := fmt.Errorf("qemu exited while %s (%s): %s: %w", step, e, output, hypervisor.ErrVMExited)
			if verr := vsockFailure(output); verr != nil {
				err = fmt.Errorf("%w: %w", err, verr)
			}
			return err
		default:
			return fmt.Errorf("%s: %w", step, err)
		}
	}

	dctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	alive := func() bool { return !isClosed(v.done) }
	con, err := dialConsole(dctx, v.consoleSocketPath(), lg, alive)
	if err != nil {
		return exitedErr("connecting to its console", err)
	}
	undo.push(func() { con.close(0) })
	v.mu.Lock()
	v.console = con
	v.mu.Unlock()
	q, err := dialQMP(dctx, v.qmpPath(), alive, v.onEvent)
	if err != nil {
		return exitedErr("connecting to its monitor", err)
	}
	undo.push(q.close)
	v.mu.Lock()
	v.qmp = q
	v.mu.Unlock()
	rt.monitor = time.Since(launched)
	if t := v.cfg.Template; t != nil && t.Restore {
		used, err := v.restore(ctx, q, &rt)
		if err != nil {
			companionsUnused = !used
			return exitedErr("restoring from the template", err)
		}
	} else if _, err := q.execute(dctx, "cont", nil); err != nil {
		return exitedErr("starting the vCPUs", err)
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state == stateStarting {
		v.state = stateRunning
	}
	logger = logger.WithField("pid", cmd.Process.Pid).WithField("accel", v.layout.accel).
		WithField("machine", v.layout.machine).WithField("vhost_net", l.vhostNet)
	if t := v.cfg.Template; t != nil && t.Restore {
		logger = logger.WithFields(rt.fields())
	}
	logger.Info("qemu started")
	return nil
}

// qemuOutput is QEMU's output for an error message, without the notice
// that it waits for the console connection (wait=on), which it prints on
// every start.
func qemuOutput(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	lines = slices.DeleteFunc(lines, func(l string) bool { return strings.Contains(l, "QEMU waiting for connection on:") })
	return strings.Join(lines, "\n")
}

// launch starts QEMU with child.StartIn (its own process group; killed by the
// kernel if the shim dies without Stop; born in its cgroup on v2, moved
// there at once on v1) and records its process.
func (v *VM) launch(cmd *exec.Cmd, cg *vmCgroup) error {
	started, err := child.StartIn(cmd, nil, cg.g, v.exited)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.pid, v.started = cmd.Process.Pid, started
	v.proc = cmd.Process
	v.mu.Unlock()
	return nil
}

// exited records how QEMU ended and closes done.
func (v *VM) exited(ps *os.ProcessState, err error) {
	e := hypervisor.Exit{Code: -1, At: time.Now()}
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = unix.SignalName(ws.Signal())
		} else {
			e.Code = ps.ExitCode()
		}
	} else if err != nil {
		e.Signal = "unknown (" + err.Error() + ")"
	}
	v.releaseUID()
	v.mu.Lock()
	e.Requested = v.stopRequested || v.shutdownReason == "guest-shutdown"
	v.exit = e
	if v.state == stateStarting || v.state == stateRunning || v.state == statePaused {
		v.state = stateExited
	}
	v.mu.Unlock()
	close(v.done)
}

// releaseUID gives back the user ID QEMU ran as, once it has been reaped
// or never started.
func (v *VM) releaseUID() {
	v.mu.Lock()
	l := v.uid
	v.uid = nil
	v.mu.Unlock()
	l.release()
}

// onEvent notes QMP events that explain an exit, and passes on the
// deletion of devices.
func (v *VM) onEvent(name string, data json.RawMessage) {
	switch name {
	case "DEVICE_DELETED":
		v.deviceDeleted(data)
		return
	case "VSERPORT_CHANGE":
		v.agentPortEvent(data)
		return
	}
	if name != "SHUTDOWN" {
		return
	}
	var d struct {
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal(data, &d)
	v.mu.Lock()
	v.shutdownReason = d.Reason
	v.mu.Unlock()
}

// Stop ends QEMU: QMP quit, then SIGKILL after Options.StopTimeout or when
// ctx is done, whichever comes first. Then it removes the cgroup and the
// sockets and pid file in the state directory; the console log stays for
// post-mortems and ConsoleTail (the state directory belongs to the
// caller).
func (v *VM) Stop(ctx context.Context) error {
	v.stopMu.Lock()
	defer v.stopMu.Unlock()
	v.mu.Lock()
	st, q, proc, cg, con, lg := v.state, v.qmp, v.proc, v.cgroup, v.console, v.consoleLog
	if st == stateStopped {
		v.mu.Unlock()
		return nil
	}
	v.stopRequested = true
	v.mu.Unlock()
	logger := log.G(ctx).WithField("vm", v.cfg.ID)

	var errs []error
	if proc != nil && !isClosed(v.done) {
		qctx, cancel := context.WithTimeout(ctx, v.opts.StopTimeout)
		if q != nil {
			// The reply may not arrive: QEMU can close the monitor first.
			_, _ = q.execute(qctx, "quit", nil)
		}
		select {
		case <-v.done:
		case <-qctx.Done():
			logger.Warn("qemu did not quit in time; killing it")
			_ = proc.Kill()
			select {
			case <-v.done:
			case <-time.After(killWait):
				errs = append(errs, fmt.Errorf("qemu pid %d did not die after SIGKILL", proc.Pid))
			}
		}
		cancel()
	}
	if q != nil {
		q.close()
	}
	if con != nil {
		// QEMU's end closes the socket; the copy then ends once it has
		// written QEMU's last output.
		wait := time.Duration(0)
		if isClosed(v.done) {
			wait = killWait
		}
		con.close(wait)
	}
	if lg != nil {
		_ = lg.Close()
	}
	if cg != nil && isClosed(v.done) {
		if err := cg.delete(); err != nil {
			errs = append(errs, err)
		}
	}
	v.removeStateFiles()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping vm %s: %w", v.cfg.ID, err)
	}
	v.setState(stateStopped)
	return nil
}

func (v *VM) setState(s state) {
	v.mu.Lock()
	v.state = s
	v.mu.Unlock()
}

// checkFiles reports missing inputs before anything is created.
func (v *VM) checkFiles() error {
	st, err := os.Stat(v.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("state dir %s is not a directory: %w", v.cfg.StateDir, errdefs.ErrInvalidArgument)
	}
	files := []string{v.cfg.Kernel}
	if v.cfg.Initrd != "" {
		files = append(files, v.cfg.Initrd)
	}
	for _, b := range v.cfg.Blocks {
		files = append(files, b.Path)
	}
	if v.cfg.RootImage != nil {
		files = append(files, v.cfg.RootImage.Path)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
	}
	return nil
}

// removeStateFiles removes what QEMU creates in the state directory,
// except the console log (console.log and console.log.1).
func (v *VM) removeStateFiles() {
	files := []string{v.qmpPath(), v.consoleSocketPath(), v.pidPath()}
	if privateClone(&v.cfg) {
		files = append(files, filepath.Join(v.dir(), cloneMemoryFile))
	}
	if a := v.Agent(); a.Transport == hypervisor.TransportSerial && filepath.Dir(a.SocketPath) == v.dir() {
		files = append(files, a.SocketPath)
	}
	for _, f := range files {
		_ = os.Remove(f)
	}
}

// mallocTunables are the glibc malloc settings QEMU runs with: memory
// blocks of 128 KiB or more are mapped and unmapped on their own, and the
// heap is trimmed once 128 KiB at its top are free. glibc's defaults raise
// both thresholds as a program frees large blocks (up to 32 MiB for the
// mapping threshold), so that QEMU's heap would keep what it once held (the
// software TLB's tables, resized during a boot under TCG, among it): about
// 0.6 MiB more per idle VM (docs/benchmarks.md).
const mallocTunables = "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072"

// gSliceEnv makes glib's slice allocator (g_slice_new, which GLib 2.74's
// balanced trees use for their nodes) allocate with malloc. TCG keeps a
// tree node per translated block; when the translation cache is emptied,
// the slice allocator kept the freed nodes for itself, while malloc's
// free pages go back to the host at QEMU's next malloc_trim: about 2.8
// MiB less per idle pod with a container (docs/benchmarks.md). GLib 2.76
// and later always allocate slices with malloc and ignore it.
const gSliceEnv = "G_SLICE=always-malloc"

// qemuEnv is QEMU's environment: env with mallocTunables added to its
// GLIBC_TUNABLES, unless that sets a malloc threshold itself (the
// operator's choice then stands; its other tunables are kept), and with
// gSliceEnv unless env sets G_SLICE. Of a variable set twice, exec.Cmd
// passes the last, so the last GLIBC_TUNABLES is the one changed.
func qemuEnv(env []string) []string {
	out := slices.Clone(env)
	tunables, gslice := -1, false
	for i, kv := range out {
		if strings.HasPrefix(kv, "G_SLICE=") {
			gslice = true
		}
		if strings.HasPrefix(kv, "GLIBC_TUNABLES=") {
			tunables = i
		}
	}
	if tunables < 0 {
		out = append(out, "GLIBC_TUNABLES="+mallocTunables)
	} else if v := strings.TrimPrefix(out[tunables], "GLIBC_TUNABLES="); v == "" {
		out[tunables] = "GLIBC_TUNABLES=" + mallocTunables
	} else if !strings.Contains(v, "glibc.malloc.mmap_threshold") && !strings.Contains(v, "glibc.malloc.trim_threshold") {
		out[tunables] += ":" + mallocTunables
	}
	if !gslice {
		out = append(out, gSliceEnv)
	}
	return out
}

// dupFiles duplicates descriptors the caller owns, so that handing them to
// exec (which closes its *os.File copies) leaves the caller's open.
func dupFiles(fds []uintptr) ([]*os.File, error) {
	var files []*os.File
	for _, fd := range fds {
		nfd, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeFiles(files)
			return nil, fmt.Errorf("duplicating fd %d: %w", fd, err)
		}
		files = append(files, os.NewFile(uintptr(nfd), fmt.Sprintf("fd%d", fd)))
	}
	return files, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
