package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/storage"
)

// ContainerState is where a container is in its life.
type ContainerState string

// The container states: created → running ⇄ paused, running or paused →
// stopped when the init process exits; Delete ends every state in deleted
// (the live ones only when forced).
const (
	ContainerCreated ContainerState = "created"
	ContainerRunning ContainerState = "running"
	ContainerPaused  ContainerState = "paused"
	ContainerStopped ContainerState = "stopped"
	ContainerDeleted ContainerState = "deleted"
)

var containerTransitions = map[ContainerState][]ContainerState{
	ContainerCreated: {ContainerRunning, ContainerStopped, ContainerDeleted},
	ContainerRunning: {ContainerPaused, ContainerStopped, ContainerDeleted},
	ContainerPaused:  {ContainerRunning, ContainerStopped, ContainerDeleted},
	ContainerStopped: {ContainerDeleted},
}

// ContainerConfig describes a container to create.
type ContainerConfig struct {
	// ID names the container; see storage.ValidateID.
	ID string
	// Bundle is the absolute bundle directory; a relative root.path and
	// relative bind sources are resolved inside it.
	Bundle string
	// Spec is the OCI runtime spec (the bundle's config.json). It is not
	// modified.
	Spec *specs.Spec
	// Rootfs, when set, are mounted in order as the root filesystem
	// instead of binding Spec.Root.Path.
	Rootfs []storage.Mount
	// GuestMounts are indices of bind mounts in Spec.Mounts whose source
	// is a guest path (GuestShmDir): nothing is shared for them.
	GuestMounts []int
	// PodUID is the Kubernetes pod's UID when the container is one of a
	// CRI pod's (from containerd's CRI annotations), "" otherwise. In a
	// sandbox without a shared file system, the binds of the pod's
	// emptyDir volumes (the kubelet's directories of this pod) become
	// directories in the guest (storage.LocalEmptyDirs).
	PodUID string
	// Stdio of the init process. Stdio.Terminal must match
	// Spec.Process.Terminal.
	Stdio IO
	// PodSandbox says the container is a pod's sandbox container, which
	// the agent makes as a light process that holds the pod's namespaces
	// instead of running the spec's process. Its root (Rootfs,
	// Spec.Root) and mounts are not used: nothing of them reaches the
	// guest.
	PodSandbox bool
}

// Container is a container in the sandbox's VM.
type Container struct {
	sb   *Sandbox
	id   string
	init *Process
	// disks are the IDs of the hot-added disks that hold the root
	// filesystem (one for a block-device root, the layers and the
	// writable layer for an erofs root), none when it is shared; set at
	// create.
	disks []string

	mu sync.Mutex
	// state is guarded by mu.
	state ContainerState
	// execs holds the processes started by Exec, by exec ID, and
	// reserves (nil) the IDs of those being started; guarded by mu.
	execs map[string]*Process
	// oomRate limits the container's OOM events; guarded by mu.
	oomRate window
}

// ID returns the container's ID.
func (c *Container) ID() string { return c.id }

// Init returns the container's init process.
func (c *Container) Init() *Process { return c.init }

// State returns the container's lifecycle state.
func (c *Container) State() ContainerState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

func (c *Container) transition(to ContainerState, from ...ContainerState) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transitionLocked(to, from...)
}

// transitionLocked moves to to when that is allowed and, when from is
// given, the container is in one of those states. c.mu must be held.
func (c *Container) transitionLocked(to ContainerState, from ...ContainerState) error {
	ok := len(from) == 0
	for _, f := range from {
		ok = ok || f == c.state
	}
	if ok {
		for _, allowed := range containerTransitions[c.state] {
			if allowed == to {
				c.state = to
				return nil
			}
		}
	}
	return fmt.Errorf("container %s is %s, cannot become %s: %w", c.id, c.state, to, errdefs.ErrFailedPrecondition)
}

// CreateContainer puts the container's files into the shared storage and
// has the agent create it, its init process stopped before the program runs
// (as `runc create`). A failed create leaves nothing behind, on the host or
// in the guest.
func (s *Sandbox) CreateContainer(ctx context.Context, cfg ContainerConfig) (*Container, error) {
	return s.createContainer(ctx, cfg, StateRunning)
}

// createContainer is CreateContainer in a sandbox that is in state (a warm
// start's warm-up creates its container while the sandbox is starting).
func (s *Sandbox) createContainer(ctx context.Context, cfg ContainerConfig, state State) (_ *Container, retErr error) {
	if err := validateContainer(cfg); err != nil {
		return nil, fmt.Errorf("creating container %s: %w", cfg.ID, err)
	}
	if err := s.reserve(cfg.ID, state); err != nil {
		return nil, err
	}
	var undo cleanups
	undo.push(func(context.Context) error { s.release(cfg.ID, nil); return nil })
	defer func() {
		if retErr != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			if err := undo.run(cctx); err != nil {
				log.G(ctx).WithError(err).WithField("container", cfg.ID).Warn("rolling back a failed container create")
			}
			retErr = fmt.Errorf("creating container %s: %w", cfg.ID, retErr)
		}
	}()

	r, err := s.containerRoot(ctx, cfg, &undo)
	if err != nil {
		return nil, err
	}
	spec, err := json.Marshal(r.spec)
	if err != nil {
		return nil, fmt.Errorf("encoding the guest spec: %w", err)
	}
	st, req, err := s.openStdio(ctx, cfg.Stdio)
	if err != nil {
		return nil, err
	}
	undo.push(func(context.Context) error { st.close(); return nil })
	creq := &agent.CreateContainerRequest{
		ContainerId: cfg.ID,
		Spec:        spec,
		Storages:    r.storages,
		Stdio:       req,
		Files:       r.copied,
		PodSandbox:  cfg.PodSandbox,
		EmptyDirs:   r.emptyDirs,
	}
	if err := checkRequestSize(creq); err != nil {
		return nil, fmt.Errorf("container %s: %w", cfg.ID, err)
	}
	resp, err := s.client.Containers().CreateContainer(ctx, creq)
	if err != nil {
		// The guest may have made part of it before failing, or before
		// the caller gave up.
		undo.push(func(ctx context.Context) error { return s.removeInGuest(ctx, cfg.ID, true) })
		return nil, s.guestError(err)
	}
	undo.push(func(ctx context.Context) error { return s.removeInGuest(ctx, cfg.ID, true) })

	c := &Container{sb: s, id: cfg.ID, disks: r.disks, state: ContainerCreated, execs: map[string]*Process{}}
	c.init = &Process{c: c, pid: resp.GetPid(), io: st, done: make(chan struct{}), state: ProcessCreated}
	st.start(s.bg, cfg.Stdio)
	s.release(cfg.ID, c)
	log.G(ctx).WithField("container", cfg.ID).WithField("pid", c.init.pid).Debug("container created")
	return c, nil
}

// containerRoot is what a container's create hands the guest besides its
// stdio.
type containerRoot struct {
	// spec is the guest spec.
	spec *specs.Spec
	// copied are the bind sources copied into the request, in a
	// sandbox without the shared file system.
	copied []*agent.CopiedFile
	// emptyDirs are the pod's emptyDir volumes the guest makes, in a
	// sandbox without the shared file system.
	emptyDirs []*agent.EmptyDir
	// disks are the hot-added disks of the root, storages the agent's
	// mounts of them.
	disks    []string
	storages []*agent.Storage
}

// containerRoot makes the container's root and bind sources reach the
// guest (shared, hot-added or copied), each step pushing its undo. A pod
// sandbox container gets none of them: the agent runs it on an empty
// root of its own (storage.PodSandboxSpec). That is decided here, from
// the configuration the host made of containerd's spec, never from
// anything the guest says; containerd's rootfs mounts for it are left
// as they are, for containerd to remove with the snapshot.
func (s *Sandbox) containerRoot(ctx context.Context, cfg ContainerConfig, undo *cleanups) (containerRoot, error) {
	if cfg.PodSandbox {
		g, err := storage.PodSandboxSpec(cfg.Spec)
		return containerRoot{spec: g}, err
	}
	erofs, err := storage.ErofsRootfsOf(cfg.Rootfs)
	if err != nil {
		return containerRoot{}, err
	}
	var block *storage.BlockRootfs
	if erofs == nil {
		if block, err = storage.BlockRootfsOf(cfg.Rootfs); err != nil {
			return containerRoot{}, err
		}
	}
	var r containerRoot
	if r.spec, r.copied, r.emptyDirs, err = s.containerFiles(ctx, cfg, block != nil || erofs != nil, undo); err != nil {
		return containerRoot{}, err
	}
	switch {
	case block != nil:
		d, st, err := s.addBlockRootfs(ctx, cfg.ID, block, undo)
		if err != nil {
			return containerRoot{}, err
		}
		r.disks, r.storages = []string{d}, []*agent.Storage{st}
	case erofs != nil:
		if r.disks, r.storages, err = s.addErofsRootfs(ctx, cfg.ID, erofs, undo); err != nil {
			return containerRoot{}, err
		}
	}
	return r, nil
}

// ErrNeedsSharedFS is the class of a container a sandbox without the
// shared file system cannot run: its root is a host directory.
var ErrNeedsSharedFS = fmt.Errorf("the container's root is a host directory, which needs the shared file system (virtio-fs): "+
	"with shared_fs = \"none\" a root must be a disk, from containerd's blockfile or erofs snapshotter: %w", errdefs.ErrNotImplemented)

// maxRequestBytes is the largest CreateContainer request sent: ttRPC's
// message limit (4 MiB) less room for its envelope (service, method,
// metadata).
const maxRequestBytes = 4<<20 - 64<<10

// checkRequestSize refuses a request the ttRPC connection would not carry
// (with copied bind sources, the spec and copies may approach the limit).
func checkRequestSize(req *agent.CreateContainerRequest) error {
	if n := proto.Size(req); n > maxRequestBytes {
		return fmt.Errorf("the request to the agent holds %d bytes (spec and copied bind sources), more than the %d one request carries: lower runtime.copy_max_bytes or the copied sources: %w", n, maxRequestBytes, errdefs.ErrInvalidArgument)
	}
	return nil
}

// containerFiles makes the container's files reach the guest: put into
// the shared tree (undone by undo), or, in a sandbox without it, the
// root on a disk (blockRoot), the pod's emptyDir volumes made in the guest
// and the other bind sources copied, bounded, for the agent to write. It
// returns the guest spec, the copies and the emptyDir volumes.
func (s *Sandbox) containerFiles(ctx context.Context, cfg ContainerConfig, blockRoot bool, undo *cleanups) (*specs.Spec, []*agent.CopiedFile, []*agent.EmptyDir, error) {
	if s.storage == nil {
		if !blockRoot {
			return nil, nil, nil, ErrNeedsSharedFS
		}
		spec, guestMounts, dirs, err := storage.LocalEmptyDirs(s.kubeletPods, cfg.Spec, cfg.PodUID, cfg.GuestMounts)
		if err != nil {
			return nil, nil, nil, err
		}
		guest, files, err := storage.CopyContainer(cfg.ID, spec, cfg.Bundle, guestMounts, s.copyLimits)
		if err != nil {
			return nil, nil, nil, err
		}
		out := make([]*agent.CopiedFile, len(files))
		for i, f := range files {
			out[i] = &agent.CopiedFile{
				Path: f.Path, Kind: agent.CopiedFile_Kind(f.Kind), Mode: f.Mode,
				Uid: f.UID, Gid: f.GID, Data: f.Data, Link: f.Link,
			}
		}
		var eds []*agent.EmptyDir
		for _, d := range dirs {
			eds = append(eds, &agent.EmptyDir{Name: d.Name, Mode: d.Mode, Uid: d.UID, Gid: d.GID, SizeBytes: d.Size})
		}
		return guest, out, eds, nil
	}
	guest, err := s.storage.AddContainer(ctx, storage.Container{
		ID: cfg.ID, Spec: cfg.Spec, Bundle: cfg.Bundle, Rootfs: cfg.Rootfs, GuestMounts: cfg.GuestMounts,
		BlockRootfs: blockRoot,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	undo.push(func(ctx context.Context) error { return s.storage.RemoveContainer(ctx, cfg.ID) })
	return guest, nil, nil, nil
}

// removeInGuest has the agent remove a container; a VM that is gone has
// nothing left to remove.
func (s *Sandbox) removeInGuest(ctx context.Context, id string, force bool) error {
	if !s.vmAlive() {
		return nil
	}
	_, err := s.client.Containers().RemoveContainer(ctx, &agent.RemoveContainerRequest{ContainerId: id, Force: force})
	if err != nil && !errdefs.IsNotFound(err) {
		if !s.vmAlive() {
			return nil
		}
		return fmt.Errorf("removing container %s in the guest: %w", id, err)
	}
	return nil
}

// reserve claims id for a container being created in a sandbox that is in
// state.
func (s *Sandbox) reserve(id string, state State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != state {
		return fmt.Errorf("creating container %s: sandbox %s is %s: %w", id, s.id, s.state, errdefs.ErrFailedPrecondition)
	}
	if _, ok := s.containers[id]; ok {
		return fmt.Errorf("container %s: %w", id, errdefs.ErrAlreadyExists)
	}
	s.containers[id] = nil
	return nil
}

// release sets the container of a reserved id, or frees it when c is nil.
func (s *Sandbox) release(id string, c *Container) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c == nil {
		delete(s.containers, id)
		return
	}
	s.containers[id] = c
}

// Container returns a container of the sandbox by ID.
func (s *Sandbox) Container(id string) (*Container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[id]
	if c == nil {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// closeContainers closes the streams of every process when the sandbox
// stops.
func (s *Sandbox) closeContainers() {
	s.mu.Lock()
	cs := make([]*Container, 0, len(s.containers))
	for _, c := range s.containers {
		if c != nil {
			cs = append(cs, c)
		}
	}
	s.mu.Unlock()
	for _, c := range cs {
		for _, p := range c.processes() {
			p.io.close()
			p.abandon(fmt.Errorf("%s: sandbox %s stopped before it started: %w", p.name(), s.id, errdefs.ErrUnavailable))
		}
	}
}

func (c *Container) processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := []*Process{c.init}
	for _, p := range c.execs {
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// Start runs the init process's program.
func (c *Container) Start(ctx context.Context) error {
	if c.State() != ContainerCreated {
		return fmt.Errorf("starting container %s: it is %s: %w", c.id, c.State(), errdefs.ErrFailedPrecondition)
	}
	if _, err := c.sb.client.Containers().StartContainer(ctx, &agent.StartContainerRequest{ContainerId: c.id}); err != nil {
		return fmt.Errorf("starting container %s: %w", c.id, c.sb.guestError(err))
	}
	if err := c.transition(ContainerRunning, ContainerCreated); err != nil {
		return err
	}
	if err := c.init.transition(ProcessRunning); err != nil {
		return err
	}
	go c.init.watch()
	return nil
}

// initExited records that the init process has ended.
func (c *Container) initExited() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != ContainerDeleted && c.state != ContainerStopped {
		_ = c.transitionLocked(ContainerStopped)
	}
}

// Wait waits for the init process; see Process.Wait.
func (c *Container) Wait(ctx context.Context) (ExitStatus, error) { return c.init.Wait(ctx) }

// Signal sends sig to the init process, or with all to every process of
// the container.
func (c *Container) Signal(ctx context.Context, sig syscall.Signal, all bool) error {
	return c.init.Signal(ctx, sig, all)
}

// ResizeTTY sets the size of the init process's terminal.
func (c *Container) ResizeTTY(ctx context.Context, width, height uint32) error {
	return c.init.ResizeTTY(ctx, width, height)
}

// Exec starts an additional process in the running container. execID must
// be unique among the container's processes.
func (c *Container) Exec(ctx context.Context, execID string, proc *specs.Process, pio IO) (_ *Process, retErr error) {
	if err := validateProcess(proc, pio); err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, err)
	}
	if err := storage.ValidateID(execID); err != nil {
		return nil, fmt.Errorf("exec id: %w", err)
	}
	c.mu.Lock()
	if c.state != ContainerRunning {
		st := c.state
		c.mu.Unlock()
		return nil, fmt.Errorf("exec %s in container %s: it is %s: %w", execID, c.id, st, errdefs.ErrFailedPrecondition)
	}
	if _, ok := c.execs[execID]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, errdefs.ErrAlreadyExists)
	}
	// Reserve the ID; the process is published once it runs.
	c.execs[execID] = nil
	c.mu.Unlock()
	p := &Process{c: c, execID: execID, done: make(chan struct{}), state: ProcessCreated}
	defer func() {
		if retErr != nil {
			c.mu.Lock()
			delete(c.execs, execID)
			c.mu.Unlock()
			retErr = fmt.Errorf("exec %s in container %s: %w", execID, c.id, retErr)
		}
	}()

	b, err := json.Marshal(proc)
	if err != nil {
		return nil, err
	}
	st, req, err := c.sb.openStdio(ctx, pio)
	if err != nil {
		return nil, err
	}
	resp, err := c.sb.client.Containers().ExecProcess(ctx, &agent.ExecProcessRequest{
		ContainerId: c.id,
		ExecId:      execID,
		Process:     b,
		Stdio:       req,
	})
	if err != nil {
		st.close()
		return nil, c.sb.guestError(err)
	}
	p.pid, p.io = resp.GetPid(), st
	if err := p.transition(ProcessRunning); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.execs[execID] = p
	c.mu.Unlock()
	st.start(c.sb.bg, pio)
	go p.watch()
	return p, nil
}

// Process returns a process started by Exec.
func (c *Container) Process(execID string) (*Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.execs[execID]
	if p == nil {
		return nil, fmt.Errorf("process %s in container %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// Pids lists the PIDs (in the guest) of the container's processes.
func (c *Container) Pids(ctx context.Context) ([]uint32, error) {
	resp, err := c.sb.client.Containers().ListProcesses(ctx, &agent.ListProcessesRequest{ContainerId: c.id})
	if err != nil {
		return nil, fmt.Errorf("listing processes of container %s: %w", c.id, c.sb.guestError(err))
	}
	return resp.GetPids(), nil
}

// Stats reads the container's cgroup statistics in the guest.
func (c *Container) Stats(ctx context.Context) (*agent.StatsResponse, error) {
	resp, err := c.sb.client.Containers().Stats(ctx, &agent.StatsRequest{ContainerId: c.id})
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", c.id, c.sb.guestError(err))
	}
	return resp, nil
}

// Pause freezes the container's processes.
func (c *Container) Pause(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != ContainerRunning {
		return fmt.Errorf("pausing container %s: it is %s: %w", c.id, c.state, errdefs.ErrFailedPrecondition)
	}
	if _, err := c.sb.client.Containers().PauseContainer(ctx, &agent.PauseContainerRequest{ContainerId: c.id}); err != nil {
		return fmt.Errorf("pausing container %s: %w", c.id, c.sb.guestError(err))
	}
	return c.transitionLocked(ContainerPaused, ContainerRunning)
}

// Resume thaws a paused container.
func (c *Container) Resume(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != ContainerPaused {
		return fmt.Errorf("resuming container %s: it is %s: %w", c.id, c.state, errdefs.ErrFailedPrecondition)
	}
	if _, err := c.sb.client.Containers().ResumeContainer(ctx, &agent.ResumeContainerRequest{ContainerId: c.id}); err != nil {
		return fmt.Errorf("resuming container %s: %w", c.id, c.sb.guestError(err))
	}
	return c.transitionLocked(ContainerRunning, ContainerPaused)
}

// Update changes the container's resource limits.
func (c *Container) Update(ctx context.Context, r *specs.LinuxResources) error {
	if r == nil {
		return fmt.Errorf("updating container %s: no resources: %w", c.id, errdefs.ErrInvalidArgument)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("updating container %s: %w", c.id, err)
	}
	if _, err := c.sb.client.Containers().UpdateContainer(ctx, &agent.UpdateContainerRequest{ContainerId: c.id, Resources: b}); err != nil {
		return fmt.Errorf("updating container %s: %w", c.id, c.sb.guestError(err))
	}
	return nil
}

// Delete removes the container from the guest and its files from the shared
// storage, and closes its processes' streams. A container that still runs
// (or is paused) is deleted only with force, which kills it first: each of
// its processes the guest does not report gone within the kill timeout is
// declared dead (KilledStatus).
//
// The host's records do not depend on the guest: when the agent refuses the
// removal or does not answer within the kill timeout, the container is
// dropped all the same (what the guest kept is in its own VM, which goes
// with the sandbox).
func (c *Container) Delete(ctx context.Context, force bool) error {
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	switch {
	case st == ContainerDeleted:
		return fmt.Errorf("deleting container %s: %w", c.id, errdefs.ErrNotFound)
	case (st == ContainerRunning || st == ContainerPaused) && !force:
		return fmt.Errorf("deleting container %s: it is %s: %w", c.id, st, errdefs.ErrFailedPrecondition)
	}
	procs := c.processes()
	if force {
		for _, p := range procs {
			p.armKill()
		}
	}
	rctx, cancel := context.WithTimeout(ctx, c.sb.killTimeout)
	err := c.sb.removeInGuest(rctx, c.id, force)
	cancel()
	if err != nil {
		log.G(ctx).WithError(err).WithField("container", c.id).
			Warn("the guest did not remove the container; dropping it from the host's records")
	}
	for _, p := range procs {
		if force && p.State() == ProcessRunning {
			// Armed above: it ends within the kill timeout, unless
			// ctx ends first.
			select {
			case <-p.done:
			case <-ctx.Done():
				p.declareKilled()
			}
		}
		p.io.close()
		p.abandon(fmt.Errorf("%s: deleted before it started: %w", p.name(), errdefs.ErrNotFound))
	}
	var errs []error
	if err := c.sb.removeBlockRootfs(ctx, c.disks); err != nil {
		errs = append(errs, err)
	}
	if c.sb.storage != nil {
		if err := c.sb.storage.RemoveContainer(ctx, c.id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.transition(ContainerDeleted); err != nil {
		errs = append(errs, err)
	}
	c.sb.release(c.id, nil)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deleting container %s: %w", c.id, err)
	}
	return nil
}

// validateContainer checks a container configuration before anything is
// made for it.
func validateContainer(cfg ContainerConfig) error {
	if err := storage.ValidateID(cfg.ID); err != nil {
		return err
	}
	var errs []error
	if cfg.Spec == nil {
		return fmt.Errorf("no spec: %w", errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(cfg.Bundle) {
		errs = append(errs, fmt.Errorf("bundle path %q is not absolute", cfg.Bundle))
	}
	if !cfg.PodSandbox && len(cfg.Rootfs) == 0 && (cfg.Spec.Root == nil || cfg.Spec.Root.Path == "") {
		errs = append(errs, errors.New("spec has no root.path and no rootfs mounts are given"))
	}
	if cfg.Spec.Linux == nil {
		errs = append(errs, errors.New("spec has no linux section"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return validateProcess(cfg.Spec.Process, cfg.Stdio)
}

// validateProcess checks an OCI process and its stdio.
func validateProcess(p *specs.Process, pio IO) error {
	var errs []error
	switch p {
	case nil:
		errs = append(errs, errors.New("spec has no process"))
	default:
		if len(p.Args) == 0 && p.CommandLine == "" {
			errs = append(errs, errors.New("process has no args"))
		}
		if p.Cwd != "" && !filepath.IsAbs(p.Cwd) {
			errs = append(errs, fmt.Errorf("process cwd %q is not absolute", p.Cwd))
		}
		if p.Terminal != pio.Terminal {
			errs = append(errs, fmt.Errorf("process.terminal is %t but the stdio asks for terminal=%t", p.Terminal, pio.Terminal))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}
