package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/moby/sys/capability"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// pauseRootDir is the directory on which each pod sandbox process mounts
// its own root, in its own mount namespace.
const pauseRootDir = "/run/hull/pause"

// pauseStartWait bounds how long a pod sandbox's create waits for its
// process to report that it runs.
const pauseStartWait = 30 * time.Second

// podSandbox is the second kind of container: a pod's sandbox ("pause")
// container, made without libcontainer. Its init is this binary waiting in
// the IPC, UTS and (when the spec asks) PID namespaces that the pod's
// other containers join, in the container's cgroup, with the spec's user
// and no more capabilities than the spec gives; it runs no code of the
// image (docs/security.md#pod-sandbox-process).
type podSandbox struct {
	cg cgroups.Manager

	mu sync.Mutex
	// started is set by StartContainer. Guarded by mu.
	started bool
}

// pauseSysctls are the sysctl prefixes that belong to the IPC and UTS
// namespaces, by the namespace.
var pauseSysctls = map[specs.LinuxNamespaceType][]string{
	specs.IPCNamespace: {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "fs.mqueue."},
	specs.UTSNamespace: {"kernel.domainname"},
}

// pausePlan checks a pod sandbox's spec and says what of it the process
// gets: the clone flags of its namespaces and its configuration.
func pausePlan(spec *specs.Spec, root, bin string) (uintptr, *pauseConfig, error) {
	flags := uintptr(unix.CLONE_NEWNS)
	own := map[specs.LinuxNamespaceType]bool{}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Path != "" {
			return 0, nil, fmt.Errorf("%s namespace %q: a pod sandbox joins no namespace: %w", ns.Type, ns.Path, errdefs.ErrInvalidArgument)
		}
		switch ns.Type {
		case specs.IPCNamespace:
			flags |= unix.CLONE_NEWIPC
		case specs.UTSNamespace:
			flags |= unix.CLONE_NEWUTS
		case specs.PIDNamespace:
			flags |= unix.CLONE_NEWPID
		case specs.NetworkNamespace:
			flags |= unix.CLONE_NEWNET
		case specs.MountNamespace, specs.CgroupNamespace:
			// Its own mount namespace it always gets; a cgroup
			// namespace the setup stage makes once in its cgroup,
			// which is the namespace's root then.
		default:
			return 0, nil, fmt.Errorf("%s namespace: not supported for a pod sandbox: %w", ns.Type, errdefs.ErrNotImplemented)
		}
		own[ns.Type] = true
	}
	p := spec.Process
	cfg := &pauseConfig{Root: root, Bin: bin, UID: p.User.UID, GID: p.User.GID, Groups: p.User.AdditionalGids, OOMScoreAdj: p.OOMScoreAdj}
	if spec.Hostname != "" || spec.Domainname != "" {
		if !own[specs.UTSNamespace] {
			return 0, nil, fmt.Errorf("a hostname without a UTS namespace of its own: %w", errdefs.ErrInvalidArgument)
		}
		cfg.Hostname, cfg.Domainname = spec.Hostname, spec.Domainname
	}
	cfg.CgroupNS = own[specs.CgroupNamespace]
	for name, v := range spec.Linux.Sysctl {
		k := sysctlDotted(name)
		if k == "kernel.hostname" {
			return 0, nil, fmt.Errorf("sysctl %q: the spec's hostname sets it: %w", name, errdefs.ErrInvalidArgument)
		}
		if !fs.ValidPath(sysctlFile(k)) {
			return 0, nil, fmt.Errorf("sysctl %q: not a valid name: %w", k, errdefs.ErrInvalidArgument)
		}
		if !pauseSysctlAllowed(k, own) {
			return 0, nil, fmt.Errorf("sysctl %q: not in a namespace of the pod sandbox: %w", k, errdefs.ErrInvalidArgument)
		}
		if cfg.Sysctl == nil {
			cfg.Sysctl = map[string]string{}
		}
		cfg.Sysctl[k] = v
	}
	for _, r := range p.Rlimits {
		t, ok := rlimitTypes[r.Type]
		if !ok {
			return 0, nil, fmt.Errorf("process rlimit %q: unknown: %w", r.Type, errdefs.ErrInvalidArgument)
		}
		cfg.Rlimits = append(cfg.Rlimits, pauseRlimit{Type: t, Hard: r.Hard, Soft: r.Soft})
	}
	// What a root user keeps: the capabilities the spec both bounds and
	// permits. Unknown names are left out, as runc ignores them.
	if c := p.Capabilities; c != nil {
		known := map[string]int{}
		for _, k := range capability.ListKnown() {
			known["CAP_"+strings.ToUpper(k.String())] = int(k)
		}
		permitted := map[string]bool{}
		for _, n := range c.Permitted {
			permitted[n] = true
		}
		for _, n := range c.Bounding {
			if v, ok := known[n]; ok && permitted[n] {
				cfg.Bounding = append(cfg.Bounding, v)
			}
		}
	}
	return flags, cfg, nil
}

// checkCgroupFree refuses a cgroup that already holds processes or is
// frozen, as libcontainer does for a container's: the process would share
// it, or stay frozen.
func checkCgroupFree(cg cgroups.Manager) error {
	if cg.Exists() {
		pids, err := cg.GetAllPids()
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("listing the processes of its cgroup: %w", err)
		}
		if len(pids) != 0 {
			return fmt.Errorf("its cgroup holds %d processes already: %w", len(pids), errdefs.ErrFailedPrecondition)
		}
	}
	st, err := cg.GetFreezerState()
	if err != nil {
		return fmt.Errorf("reading the freezer state of its cgroup: %w", err)
	}
	if st == cgroups.Frozen {
		return fmt.Errorf("its cgroup is frozen: %w", errdefs.ErrFailedPrecondition)
	}
	return nil
}

// sysctlDotted is a sysctl's name in the dotted form: one given with
// slashes (kernel/shmmni) has its slashes and dots swapped, as runc does,
// since a dot in that form is part of a name (net/ipv4/conf/eth0.1/...).
func sysctlDotted(k string) string {
	if i := strings.IndexAny(k, "./"); i < 0 || k[i] == '.' {
		return k
	}
	return sysctlFile(k)
}

// sysctlFile is the path under /proc/sys of a sysctl's dotted name: its
// dots and slashes swapped.
func sysctlFile(k string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, k)
}

func pauseSysctlAllowed(k string, own map[specs.LinuxNamespaceType]bool) bool {
	for t, prefixes := range pauseSysctls {
		for _, p := range prefixes {
			if (k == p || strings.HasSuffix(p, ".") && strings.HasPrefix(k, p)) && own[t] {
				return true
			}
		}
	}
	return false
}

// pauseLibcontainerConfig converts a pod sandbox's spec with runc's
// converter, of whose result the cgroup alone is used. The spec has no
// root (the process makes its own at root); the converter wants one.
func pauseLibcontainerConfig(id string, spec *specs.Spec, root string) (*configs.Config, error) {
	withRoot := *spec
	withRoot.Root = &specs.Root{Path: root, Readonly: true}
	return libcontainerConfig(id, &withRoot)
}

// createPodSandbox makes a pod sandbox container's process in its cgroup.
// On error nothing is left.
func (s *containerService) createPodSandbox(ctx context.Context, id string, spec *specs.Spec, stdio *api.Stdio) (_ *podSandbox, _ *process, retErr error) {
	if stdio.GetTerminal() {
		return nil, nil, fmt.Errorf("a pod sandbox has no terminal: %w", errdefs.ErrInvalidArgument)
	}
	flags, pcfg, err := pausePlan(spec, s.paths.pause, s.pauseBin)
	if err != nil {
		return nil, nil, err
	}
	// Said here rather than by the setup stage's bind: an image built
	// before the waiting stage had a binary of its own lacks it.
	if st, err := os.Stat(s.pauseBin); err != nil || !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("the guest image has no pod sandbox binary at %s (rebuild it with hull image build): %w", s.pauseBin, errdefs.ErrFailedPrecondition)
	}
	arg, err := json.Marshal(pcfg)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the pod sandbox configuration: %w", err)
	}
	lcfg, err := pauseLibcontainerConfig(id, spec, s.paths.pause)
	if err != nil {
		return nil, nil, err
	}
	var undo cleanup
	defer func() {
		if retErr != nil {
			undo.run()
		}
	}()
	cg, err := manager.New(lcfg.Cgroups)
	if err != nil {
		return nil, nil, fmt.Errorf("cgroup: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := checkCgroupFree(cg); err != nil {
		return nil, nil, fmt.Errorf("container %s: %w", id, err)
	}
	if err := cg.Apply(-1); err != nil {
		return nil, nil, fmt.Errorf("making the cgroup: %w", err)
	}
	undo.add(func() {
		if err := cg.Destroy(); err != nil {
			log.G(ctx).WithError(err).WithField("container", id).Warn("removing the cgroup of a failed pod sandbox")
		}
	})
	if err := cg.Set(lcfg.Cgroups.Resources); err != nil {
		return nil, nil, fmt.Errorf("setting the cgroup's resources: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(s.paths.pause, 0o700); err != nil {
		return nil, nil, fmt.Errorf("pod sandbox root: %w", err)
	}
	// Its stdio is whatever the host asked, as for any container; the
	// process writes nothing.
	var lp libcontainer.Process
	pio, err := newProcIO(ctx, s.a.streams, stdio, &lp)
	if err != nil {
		return nil, nil, err
	}
	// Once the process's monitor runs, its I/O is the monitor's to end.
	monitored := false
	undo.add(func() {
		if !monitored {
			pio.abort()
		}
	})
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("sync pipe: %w", err)
	}
	defer func() { _ = syncR.Close() }()
	defer func() { _ = syncW.Close() }()
	files := []*os.File{asFile(lp.Stdin), asFile(lp.Stdout), asFile(lp.Stderr), syncW}
	for i, f := range files[:3] {
		if f != nil {
			continue
		}
		if files[i], err = os.OpenFile(os.DevNull, os.O_RDWR, 0); err != nil {
			return nil, nil, err
		}
		defer func() { _ = files[i].Close() }()
	}
	sys := &syscall.SysProcAttr{Cloneflags: flags}
	v2 := cgroups.IsCgroup2UnifiedMode()
	if v2 {
		dir, err := os.Open(cg.Path(""))
		if err != nil {
			return nil, nil, fmt.Errorf("opening the cgroup: %w", err)
		}
		defer func() { _ = dir.Close() }()
		sys.UseCgroupFD, sys.CgroupFD = true, int(dir.Fd())
	}
	var proc *os.Process
	err = s.a.reaper.spawn(func() ([]int, error) {
		var err error
		proc, err = os.StartProcess(s.pauseExe, []string{"hull-agent", PauseSetupArg, string(arg)}, &os.ProcAttr{Dir: "/", Env: []string{}, Files: files, Sys: sys})
		if err != nil {
			return nil, err
		}
		return []int{proc.Pid}, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("starting the pod sandbox process: %w", err)
	}
	p := &process{cid: id, proc: proc, pid: proc.Pid, io: pio, exited: make(chan struct{}), done: make(chan struct{})}
	if err := pio.started(ctx, p.exited); err != nil {
		_ = proc.Kill()
		_, _ = proc.Wait()
		s.a.reaper.release(proc.Pid)
		return nil, nil, err
	}
	monitored = true
	go func() {
		defer s.a.recoverPanic(ctx, "process monitor")
		p.monitor(context.WithoutCancel(ctx), s.a.reaper)
	}()
	undo.add(func() {
		_ = proc.Kill()
		<-p.done
	})
	_ = syncW.Close()
	if err := waitPause(ctx, syncR); err != nil {
		return nil, nil, fmt.Errorf("pod sandbox process: %w", err)
	}
	if !v2 {
		// Outside a VM, on a host with cgroup v1: born outside, moved in.
		if err := cg.Apply(proc.Pid); err != nil {
			return nil, nil, fmt.Errorf("moving the pod sandbox into its cgroup: %w", err)
		}
	}
	return &podSandbox{cg: cg}, p, nil
}

// waitPause reads what the pod sandbox process reports on its sync pipe:
// one zero byte once it waits, an error text when the setup failed.
func waitPause(ctx context.Context, r *os.File) error {
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b := make([]byte, 4096)
		n, err := io.ReadAtLeast(r, b, 1)
		ch <- result{b[:n], err}
	}()
	t := time.NewTimer(pauseStartWait)
	defer t.Stop()
	var res result
	select {
	case res = <-ch:
	case <-t.C:
		_ = r.SetReadDeadline(time.Now())
		return fmt.Errorf("not running after %s: %w", pauseStartWait, errdefs.ErrUnavailable)
	case <-ctx.Done():
		_ = r.SetReadDeadline(time.Now())
		return ctx.Err()
	}
	switch {
	case len(res.b) == 1 && res.b[0] == 0:
		return nil
	case len(res.b) > 0:
		return fmt.Errorf("%s: %w", strings.ToValidUTF8(string(res.b), "?"), errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("exited before it ran: %w", errdefs.ErrInvalidArgument)
}

// asFile is r as the file newProcIO gave, nil when there is none.
func asFile(r any) *os.File {
	f, _ := r.(*os.File)
	return f
}

// start is StartContainer of a pod sandbox: its process waits from its
// create on; a start only records that the host started it.
func (ps *podSandbox) start(c *container) error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	switch {
	case c.init.hasExited():
		return fmt.Errorf("container %s: its process has exited: %w", c.id, errdefs.ErrFailedPrecondition)
	case ps.started:
		return fmt.Errorf("container %s is running, not created: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	ps.started = true
	return nil
}

func (ps *podSandbox) isStarted() bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.started
}

// signalAll signals every process in the pod sandbox's cgroup: its own,
// and those of a PID namespace it holds (their containers' cgroups are
// their own, so none of them).
func (ps *podSandbox) signalAll(c *container, sig unix.Signal) error {
	pids, err := ps.cg.GetAllPids()
	if err != nil {
		return fmt.Errorf("listing processes of %s: %w", c.id, err)
	}
	if len(pids) == 0 {
		return fmt.Errorf("container %s has no processes: %w", c.id, errdefs.ErrNotFound)
	}
	if sig == unix.SIGKILL {
		// Forks included.
		return killCgroup(ps.cg.Path(""))
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signalling %d in %s: %w", pid, c.id, err)
		}
	}
	return nil
}

// errPodSandbox is the error of the operations a pod sandbox has no use
// for.
func errPodSandbox(op, id string) error {
	return fmt.Errorf("%s container %s: not supported for a pod sandbox container, whose process only holds the pod's namespaces: %w", op, id, errdefs.ErrNotImplemented)
}

// selfExe is the path of the agent's binary, which the setup stage of a
// pod sandbox process runs.
func selfExe() string {
	p, err := os.Executable()
	if err != nil {
		return "/proc/self/exe"
	}
	return p
}
