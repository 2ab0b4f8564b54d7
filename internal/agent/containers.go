package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	_ "github.com/opencontainers/cgroups/devices" // device rules of the cgroup managers
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/channel"
)

// containerStateDir is where libcontainer keeps its container state.
const containerStateDir = "/run/hull/libcontainer"

// stopWait bounds how long removing a container waits for its init to die
// after SIGKILL.
const stopWait = 10 * time.Second

// modulesWait bounds how long CreateSandbox waits for the storage kernel
// modules (virtio-fs, overlay), which load after the agent began serving.
const modulesWait = 30 * time.Second

// containerService serves api.ContainersService with runc's libcontainer.
type containerService struct {
	a     *Agent
	paths guestPaths
	oom   *oomQueue
	// emptyDirs are the pod's emptyDir volumes, kept until the sandbox
	// is destroyed.
	emptyDirs *emptyDirs
	// pauseExe is the path of the binary a pod sandbox process's setup
	// stage runs, this one; pauseBin that of its waiting stage,
	// channel.PauseBinaryPath (pause.go).
	pauseExe, pauseBin string

	mu sync.Mutex
	// sandboxID is set by CreateSandbox. Guarded by mu.
	sandboxID string
	// sandboxMounts are the mount points of the sandbox storages, in
	// mount order. Guarded by mu.
	sandboxMounts []string
	// containers by id. Guarded by mu.
	containers map[string]*container
	// creating holds the ids of containers being created. Guarded by mu.
	creating map[string]bool
	// sync writes back every filesystem's dirty data (sync(2)); only the
	// agent that is PID 1 of a VM syncs, the VM's filesystems being its own.
	sync func()
}

var _ api.ContainersService = (*containerService)(nil)

// guestPaths are the directories in which the container service mounts
// and writes: guestDirs in the guest; unit tests, which run on a host, give
// directories of their own.
type guestPaths struct {
	storage  string // the only tree in which the host may ask for mounts
	state    string // libcontainer's state directory
	emptyDir string // the pod's emptyDir volumes, under storage
	pause    string // mount point of a pod sandbox process's root
	copied   string // bind sources the host copied
}

// guestDirs are the guest's directories.
var guestDirs = guestPaths{storage: storageRoot, state: containerStateDir, emptyDir: emptyDirRoot, pause: pauseRootDir, copied: copiedDir}

func newContainerService(a *Agent, paths guestPaths) *containerService {
	return &containerService{
		a: a, paths: paths, oom: newOOMQueue(), emptyDirs: newEmptyDirs(paths.emptyDir), pauseExe: selfExe(), pauseBin: channel.PauseBinaryPath,
		containers: map[string]*container{}, creating: map[string]bool{},
		sync: func() {
			if a.initMode {
				unix.Sync()
			}
		},
	}
}

// container is one container of the sandbox: a libcontainer container
// (lc), or a pod's sandbox container (pod, podsandbox.go).
type container struct {
	id   string
	lc   *libcontainer.Container
	pod  *podSandbox
	spec *specs.Spec
	// mounts are the mount points of the container's storages.
	mounts []string
	// copied is the directory of the bind sources the host copied (a
	// sandbox without a shared file system); "" for none.
	copied string
	init   *process

	mu sync.Mutex
	// execs by exec id. Guarded by mu.
	execs map[string]*process
	// execPending holds exec ids being started. Guarded by mu.
	execPending map[string]bool
	// oomReported counts the OOM kills already queued. Guarded by mu.
	oomReported uint64
}

// lcError adds an errdefs class to a libcontainer error.
func lcError(err error) error {
	switch {
	case errors.Is(err, libcontainer.ErrExist):
		return fmt.Errorf("%w: %w", err, errdefs.ErrAlreadyExists)
	case errors.Is(err, libcontainer.ErrNotExist):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	case errors.Is(err, libcontainer.ErrInvalidID):
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	case errors.Is(err, libcontainer.ErrNotRunning), errors.Is(err, libcontainer.ErrRunning),
		errors.Is(err, libcontainer.ErrPaused), errors.Is(err, libcontainer.ErrNotPaused):
		return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	return err
}

func timestampOf(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// cleanup is a stack of undo steps, run in reverse on failure.
type cleanup []func()

func (c *cleanup) add(f func()) { *c = append(*c, f) }

func (c *cleanup) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

func (s *containerService) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// process finds the init process (empty execID) or an exec.
func (s *containerService) process(cid, execID string) (*container, *process, error) {
	c, err := s.get(cid)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	c.mu.Lock()
	p, ok := c.execs[execID]
	c.mu.Unlock()
	if !ok {
		return nil, nil, fmt.Errorf("process %q of container %s: %w", execID, cid, errdefs.ErrNotFound)
	}
	return c, p, nil
}

func (s *containerService) CreateSandbox(ctx context.Context, req *api.CreateSandboxRequest) (*api.CreateSandboxResponse, error) {
	if req.GetSandboxId() == "" {
		return nil, fmt.Errorf("creating sandbox: no sandbox id: %w", errdefs.ErrInvalidArgument)
	}
	if err := s.a.waitStorageReady(ctx, modulesWait); err != nil {
		return nil, fmt.Errorf("creating sandbox: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandboxID != "" {
		return nil, fmt.Errorf("sandbox %s: already created: %w", s.sandboxID, errdefs.ErrAlreadyExists)
	}
	for _, st := range req.GetStorages() {
		if err := checkStorage(s.paths.storage, st); err != nil {
			return nil, fmt.Errorf("creating sandbox: %w", err)
		}
	}
	if h := req.GetHostname(); h != "" {
		if len(h) > 64 {
			return nil, fmt.Errorf("hostname %q: longer than 64 bytes: %w", h, errdefs.ErrInvalidArgument)
		}
		if s.a.initMode {
			if err := unix.Sethostname([]byte(h)); err != nil {
				return nil, fmt.Errorf("setting hostname: %w", err)
			}
		} else {
			log.G(ctx).WithField("hostname", h).Info("not PID 1 of a VM: leaving the hostname alone")
		}
	}
	mounts, err := mountStorages(ctx, s.paths.storage, req.GetStorages())
	if err != nil {
		return nil, fmt.Errorf("creating sandbox: %w", err)
	}
	s.sandboxID, s.sandboxMounts = req.GetSandboxId(), mounts
	log.G(ctx).WithFields(log.Fields{"sandbox": s.sandboxID, "storages": len(mounts)}).Info("sandbox created")
	return &api.CreateSandboxResponse{}, nil
}

func (s *containerService) DestroySandbox(ctx context.Context, _ *api.DestroySandboxRequest) (*api.DestroySandboxResponse, error) {
	s.mu.Lock()
	ids := make([]string, 0, len(s.containers))
	for id := range s.containers {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if _, err := s.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: id, Force: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("destroying sandbox: %w", err)
	}
	if err := s.emptyDirs.unmountAll(ctx); err != nil {
		return nil, fmt.Errorf("destroying sandbox: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := unmountStorages(ctx, s.paths.storage, s.sandboxMounts); err != nil {
		return nil, fmt.Errorf("destroying sandbox: %w", err)
	}
	s.sandboxID, s.sandboxMounts = "", nil
	// A success tells the host that nothing the guest holds is worth its
	// power-off: the VM is ended at once. An unmount alone does not write
	// back a filesystem that stays mounted, one detached while busy (a
	// process not yet gone) or mounted elsewhere too (a block root bound
	// into another container): sync, as the power-off would.
	s.sync()
	return &api.DestroySandboxResponse{}, nil
}

func (s *containerService) CreateContainer(ctx context.Context, req *api.CreateContainerRequest) (_ *api.CreateContainerResponse, retErr error) {
	id := req.GetContainerId()
	if err := checkID("container", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	switch {
	case s.sandboxID == "":
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: no sandbox yet (CreateSandbox first): %w", id, errdefs.ErrFailedPrecondition)
	case s.containers[id] != nil || s.creating[id]:
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrAlreadyExists)
	}
	s.creating[id] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.creating, id)
		s.mu.Unlock()
	}()

	// How long each part took, for the log line of the create.
	begin := time.Now()
	var tMounts, tConfig, tCreate time.Duration
	spec, err := parseSpec(id, req.GetSpec(), req.GetPodSandbox())
	if err != nil {
		return nil, err
	}
	if req.GetPodSandbox() && (len(req.GetStorages()) > 0 || len(req.GetFiles()) > 0 || len(req.GetEmptyDirs()) > 0) {
		return nil, fmt.Errorf("container %s: a pod sandbox gets no storages, files or emptyDir volumes: %w", id, errdefs.ErrInvalidArgument)
	}
	for _, st := range req.GetStorages() {
		if err := checkStorage(s.paths.storage, st); err != nil {
			return nil, fmt.Errorf("container %s: %w", id, err)
		}
	}
	var undo cleanup
	defer func() {
		if retErr != nil {
			undo.run()
		}
	}()
	mounts, err := mountStorages(ctx, s.paths.storage, req.GetStorages())
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	undo.add(func() { _ = unmountStorages(ctx, s.paths.storage, mounts) })
	copied, err := writeCopied(s.paths.copied, id, req.GetFiles())
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	if copied != "" {
		undo.add(func() { _ = os.RemoveAll(copied) })
	}
	emptyDone, err := s.emptyDirs.acquire(ctx, req.GetEmptyDirs())
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	undo.add(func() { emptyDone(false) })
	defer func() {
		if retErr == nil {
			emptyDone(true)
		}
	}()
	tMounts = time.Since(begin)
	if !req.GetPodSandbox() {
		if err := checkRootfs(spec); err != nil {
			return nil, fmt.Errorf("container %s: %w", id, err)
		}
	}
	if err := applyPodNetSysctls(ctx, "/proc/sys", spec); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	if req.GetPodSandbox() {
		ps, p, err := s.createPodSandbox(ctx, id, spec, req.GetStdio())
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", id, err)
		}
		c := &container{id: id, pod: ps, spec: spec, mounts: mounts, copied: copied, init: p, execs: map[string]*process{}, execPending: map[string]bool{}}
		s.mu.Lock()
		s.containers[id] = c
		s.mu.Unlock()
		log.G(ctx).WithFields(log.Fields{"container": id, "pid": p.pid, "mounted": tMounts, "took": time.Since(begin)}).Info("pod sandbox created")
		return &api.CreateContainerResponse{Pid: uint32(p.pid)}, nil
	}
	cfg, err := libcontainerConfig(id, spec)
	if err != nil {
		return nil, err
	}
	lp, err := newLibcontainerProcess(spec.Process, true)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	if spec.Process.Terminal != req.GetStdio().GetTerminal() {
		log.G(ctx).WithField("container", id).Debug("process.terminal differs from stdio.terminal; stdio wins")
	}
	pio, err := newProcIO(ctx, s.a.streams, req.GetStdio(), lp)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	undo.add(pio.abort)
	if err := os.MkdirAll(s.paths.state, 0o700); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	tConfig = time.Since(begin)
	lc, err := libcontainer.Create(s.paths.state, id, cfg)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return nil, fmt.Errorf("container %s: %w", id, lcError(err))
		}
		return nil, fmt.Errorf("container %s: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	undo.add(func() {
		if err := lc.Destroy(); err != nil {
			log.G(ctx).WithError(err).WithField("container", id).Warn("destroying failed container")
		}
	})
	tCreate = time.Since(begin)
	p, err := s.start(ctx, lc, lp, pio, id, "", !ownPIDNamespace(spec))
	if err != nil {
		return nil, fmt.Errorf("container %s: starting init: %w", id, err)
	}
	c := &container{id: id, lc: lc, spec: spec, mounts: mounts, copied: copied, init: p, execs: map[string]*process{}, execPending: map[string]bool{}}
	s.watchOOM(ctx, c)
	s.mu.Lock()
	s.containers[id] = c
	s.mu.Unlock()
	// The times are cumulative from the call's start: storages mounted,
	// configuration made, libcontainer's container made, init started
	// (libcontainer's init process run up to its wait for the start).
	log.G(ctx).WithFields(log.Fields{
		"container": id, "pid": p.pid, "mounted": tMounts, "configured": tConfig, "made": tCreate, "took": time.Since(begin),
	}).Info("container created")
	return &api.CreateContainerResponse{Pid: uint32(p.pid)}, nil
}

// start starts lp in lc with the reaper held off, then its I/O and its
// monitor. On error the process is gone (killed and waited for) and pio is
// closed. killRest has the exit of the process kill what is left in the
// container's cgroup: for the init of a container without a PID namespace
// of its own (one that joined its pod's), whose exit the kernel does not
// end the rest with, as runc's shim does; its orphans would otherwise hold
// its output, and with it the container's exit, open.
func (s *containerService) start(ctx context.Context, lc *libcontainer.Container, lp *libcontainer.Process, pio *procIO, cid, execID string, killRest bool) (*process, error) {
	var pid int
	err := s.a.reaper.spawn(func() ([]int, error) {
		if err := lc.Start(lp); err != nil {
			return nil, err
		}
		var err error
		pid, err = lp.Pid()
		if err != nil {
			return nil, err
		}
		return []int{pid}, nil
	})
	if err != nil {
		pio.abort()
		err = lcError(err)
		if !errdefs.IsFailedPrecondition(err) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		return nil, err
	}
	p := &process{cid: cid, execID: execID, proc: lp, pid: pid, io: pio, exited: make(chan struct{}), done: make(chan struct{})}
	if killRest {
		// What is left may fork: the whole cgroup goes at once.
		var dir string
		if st, err := lc.State(); err == nil {
			dir = st.CgroupPaths[""]
		}
		p.onExit = func() {
			if dir == "" {
				log.G(ctx).WithField("container", cid).Warn("no cgroup v2 path to kill what the init left in")
				return
			}
			if err := killCgroup(dir); err != nil {
				log.G(ctx).WithError(err).WithField("container", cid).Warn("killing what the init left")
			}
		}
	}
	if err := pio.started(ctx, p.exited); err != nil {
		_ = lp.Signal(unix.SIGKILL)
		_, _ = lp.Wait()
		s.a.reaper.release(pid)
		pio.abort()
		return nil, err
	}
	go func() {
		defer s.a.recoverPanic(ctx, "process monitor")
		p.monitor(context.WithoutCancel(ctx), s.a.reaper)
	}()
	return p, nil
}

func (s *containerService) StartContainer(ctx context.Context, req *api.StartContainerRequest) (*api.StartContainerResponse, error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if c.pod != nil {
		if err := c.pod.start(c); err != nil {
			return nil, err
		}
		return &api.StartContainerResponse{}, nil
	}
	st, err := c.lc.Status()
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.id, lcError(err))
	}
	if st != libcontainer.Created {
		return nil, fmt.Errorf("container %s is %s, not created: %w", c.id, st, errdefs.ErrFailedPrecondition)
	}
	if err := c.lc.Exec(); err != nil {
		return nil, fmt.Errorf("starting container %s: %w", c.id, lcError(err))
	}
	return &api.StartContainerResponse{}, nil
}

func (s *containerService) RemoveContainer(ctx context.Context, req *api.RemoveContainerRequest) (*api.RemoveContainerResponse, error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if !c.init.hasExited() {
		if err := c.kill(req.GetForce()); err != nil {
			return nil, err
		}
		select {
		case <-c.init.exited:
		case <-time.After(stopWait):
			return nil, fmt.Errorf("container %s: init still running %s after SIGKILL: %w", c.id, stopWait, context.DeadlineExceeded)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// The output of a killed init ends with its PID namespace.
	select {
	case <-c.init.done:
	case <-time.After(stopWait):
		log.G(ctx).WithField("container", c.id).Warn("output of init still open; closing it")
	}
	// The notification of a kill that ended the container can arrive after
	// its cgroup is gone; count the kills while the cgroup still exists.
	s.reportOOMKills(ctx, c)
	if err := c.destroy(); err != nil {
		return nil, err
	}
	if err := unmountStorages(ctx, s.paths.storage, c.mounts); err != nil {
		return nil, fmt.Errorf("removing container %s: %w", c.id, err)
	}
	if c.copied != "" {
		if err := os.RemoveAll(c.copied); err != nil {
			return nil, fmt.Errorf("removing container %s: %w", c.id, err)
		}
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	log.G(ctx).WithField("container", c.id).Info("container removed")
	return &api.RemoveContainerResponse{}, nil
}

func (s *containerService) ExecProcess(ctx context.Context, req *api.ExecProcessRequest) (_ *api.ExecProcessResponse, retErr error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	execID := req.GetExecId()
	if err := checkID("exec", execID); err != nil {
		return nil, err
	}
	if c.pod != nil {
		return nil, errPodSandbox("exec in", c.id)
	}
	if c.init.hasExited() {
		return nil, fmt.Errorf("container %s is not running: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	c.mu.Lock()
	if old, ok := c.execs[execID]; (ok && !old.hasExited()) || c.execPending[execID] {
		c.mu.Unlock()
		return nil, fmt.Errorf("process %q of container %s: %w", execID, c.id, errdefs.ErrAlreadyExists)
	}
	c.execPending[execID] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.execPending, execID)
		c.mu.Unlock()
	}()
	ps, err := parseExecProcess(req.GetProcess())
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, err)
	}
	lp, err := newLibcontainerProcess(ps, false)
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, err)
	}
	pio, err := newProcIO(ctx, s.a.streams, req.GetStdio(), lp)
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, err)
	}
	p, err := s.start(ctx, c.lc, lp, pio, c.id, execID, false)
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, err)
	}
	c.mu.Lock()
	c.execs[execID] = p
	c.mu.Unlock()
	return &api.ExecProcessResponse{Pid: uint32(p.pid)}, nil
}

func (s *containerService) SignalProcess(ctx context.Context, req *api.SignalProcessRequest) (*api.SignalProcessResponse, error) {
	sig := unix.Signal(req.GetSignal())
	if sig <= 0 || sig > 64 {
		return nil, fmt.Errorf("signal %d: %w", req.GetSignal(), errdefs.ErrInvalidArgument)
	}
	c, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if req.GetAll() {
		if req.GetExecId() != "" {
			return nil, fmt.Errorf("signal all: names a container, not an exec: %w", errdefs.ErrInvalidArgument)
		}
		if c.pod != nil {
			if err := c.pod.signalAll(c, sig); err != nil {
				return nil, err
			}
			return &api.SignalProcessResponse{}, nil
		}
		pids, err := c.lc.Processes()
		if err != nil {
			return nil, fmt.Errorf("listing processes of %s: %w", c.id, lcError(err))
		}
		if len(pids) == 0 {
			return nil, fmt.Errorf("container %s has no processes: %w", c.id, errdefs.ErrNotFound)
		}
		for _, pid := range pids {
			if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("signalling %d in %s: %w", pid, c.id, err)
			}
		}
		return &api.SignalProcessResponse{}, nil
	}
	if p == c.init && c.lc != nil {
		if p.hasExited() {
			return nil, fmt.Errorf("container %s: init has exited: %w", c.id, errdefs.ErrNotFound)
		}
		// Container.Signal thaws a paused container for SIGKILL.
		if err := c.lc.Signal(sig); err != nil {
			if errors.Is(err, libcontainer.ErrNotRunning) {
				return nil, fmt.Errorf("container %s: init has exited: %w", c.id, errdefs.ErrNotFound)
			}
			return nil, fmt.Errorf("signalling container %s: %w", c.id, lcError(err))
		}
		return &api.SignalProcessResponse{}, nil
	}
	if err := p.signal(sig); err != nil {
		return nil, err
	}
	return &api.SignalProcessResponse{}, nil
}

func (s *containerService) WaitProcess(ctx context.Context, req *api.WaitProcessRequest) (*api.WaitProcessResponse, error) {
	_, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	return p.wait(ctx)
}

func (s *containerService) ResizeTTY(ctx context.Context, req *api.ResizeTTYRequest) (*api.ResizeTTYResponse, error) {
	_, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if err := p.io.resize(req.GetWidth(), req.GetHeight()); err != nil {
		return nil, err
	}
	return &api.ResizeTTYResponse{}, nil
}

func (s *containerService) CloseStdin(ctx context.Context, req *api.CloseStdinRequest) (*api.CloseStdinResponse, error) {
	_, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if err := p.io.closeStdin(); err != nil {
		return nil, fmt.Errorf("closing stdin: %w", err)
	}
	return &api.CloseStdinResponse{}, nil
}

// kill kills the init of a container that runs; one that was started
// only with force.
func (c *container) kill(force bool) error {
	if c.pod != nil {
		if c.pod.isStarted() && !force {
			return fmt.Errorf("container %s is running: stop it first or force: %w", c.id, errdefs.ErrFailedPrecondition)
		}
		if err := c.init.signal(unix.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("killing container %s: %w", c.id, err)
		}
		return nil
	}
	st, _ := c.lc.Status()
	if st != libcontainer.Created && !force {
		return fmt.Errorf("container %s is %s: stop it first or force: %w", c.id, st, errdefs.ErrFailedPrecondition)
	}
	if err := c.lc.Signal(unix.SIGKILL); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) {
		return fmt.Errorf("killing container %s: %w", c.id, lcError(err))
	}
	return nil
}

// destroy removes what holds the container once its init is gone: its
// cgroup and libcontainer's state.
func (c *container) destroy() error {
	if c.pod != nil {
		if err := c.pod.cg.Destroy(); err != nil {
			return fmt.Errorf("removing container %s: its cgroup: %w", c.id, err)
		}
		return nil
	}
	if err := c.lc.Destroy(); err != nil {
		return fmt.Errorf("removing container %s: %w", c.id, lcError(err))
	}
	return nil
}

// ownPIDNamespace tells whether the spec gives the container a new PID
// namespace.
func ownPIDNamespace(spec *specs.Spec) bool {
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			return ns.Path == ""
		}
	}
	return false
}
