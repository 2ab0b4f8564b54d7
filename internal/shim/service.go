package shim

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/hull-runtime/hull/internal/ocispec"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/podmetrics"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/storage"
)

// stopTimeout bounds the release of a sandbox and of a failed create.
const stopTimeout = time.Minute

func init() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			sd, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return newService(ic.Context, pp.(shim.Publisher), sd.(shutdown.Service)), nil
		},
	})
}

// service is the task API of one pod's shim.
type service struct {
	// bg is the shim's process-lifetime context (namespace, logger), for
	// the exit watchers and event forwarding; never a request's.
	bg       context.Context
	events   *eventQueue
	shutdown shutdown.Service

	// startMu serializes the start of the sandbox.
	startMu sync.Mutex
	// growMu serializes the VM's growth for pod members.
	growMu sync.Mutex

	mu sync.Mutex
	// sb is the pod's sandbox, nil before the first create and after the
	// last delete; guarded by mu.
	sb *sandbox.Sandbox
	// stateRoot, sandboxID (the pod's ID) and vmID (its host-side ID,
	// namespaced) name the sandbox and its state; guarded by mu.
	stateRoot, sandboxID, vmID string
	// containers are the tasks, by container ID; an ID being created
	// maps to nil. Guarded by mu.
	containers map[string]*container
	// podShm is the host source of the pod sandbox's /dev/shm bind, which
	// the pod's members bind too; guarded by mu.
	podShm string
	// base is the VM's boot size, size its current one, limit how far it
	// may grow; sizedByAnnotations is set when the pod's sizing
	// annotations already counted its containers; grown holds what each
	// live pod member asked to add. Guarded by mu.
	base, size, limit  vmSize
	sizedByAnnotations bool
	grown              map[string]vmSize
	// allowAnnotations is the pod's runtime.enable_annotations, compiled
	// when its sandbox started; guarded by mu.
	allowAnnotations []*regexp.Regexp
	// vmPid is the VMM's host PID, the PID of every task (pids.go), set
	// once the sandbox started; guarded by mu.
	vmPid uint32
	// collector measures the sandbox, from its start; metricsServer
	// serves it once the sandbox runs (metrics.go). Guarded by mu.
	collector     *podmetrics.Collector
	metricsServer *podmetrics.Server

	// tracing is set up by the first create (tracing.go).
	tracing shimTracing

	// warm is the pre-booted sandbox of a warm shim (WithWarmSandbox),
	// until the first create adopts it or the shim shuts down; guarded by
	// mu.
	warm *sandbox.Sandbox
	// start is how the sandbox started (podmetrics.StartCold, ...);
	// guarded by mu.
	start string
}

var _ taskapi.TaskService = (*service)(nil)

// listenerFD is the descriptor the shim library serves the task API on
// when Manager.Start hands it the socket (its ExtraFiles[0]).
const listenerFD = 3

func newService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) *service {
	// The library serves on a duplicate of listenerFD and leaves the
	// descriptor itself open, without close-on-exec, until the garbage
	// collector closes it: a process the shim started before then (QEMU,
	// virtiofsd) would hold the listening socket, a killed shim's socket
	// would accept connections while it dies, and `shim delete` would
	// take the shim for alive and leave its socket.
	unix.CloseOnExec(listenerFD)
	s := &service{
		bg:         ctx,
		events:     newEventQueue(ctx, publisher),
		shutdown:   sd,
		containers: map[string]*container{},
		warm:       takeWarmSandbox(),
	}
	sd.RegisterCallback(func(ctx context.Context) error {
		s.events.close()
		s.stopWarm(ctx)
		return nil
	})
	return s
}

// RegisterTTRPC serves the task API v2, the version every containerd from
// 1.6 on speaks to a shim that answers `start` with a plain address.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskapi.RegisterTaskService(server, s)
	return nil
}

// Create makes a container, starting the pod's VM for its first one. A
// failed create leaves nothing behind: a VM it started is stopped again.
func (s *service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (_ *taskapi.CreateTaskResponse, retErr error) {
	defer func() {
		if retErr != nil {
			s.countContainer(ctx, retErr)
		}
	}()
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("restoring from a checkpoint: %w", errdefs.ErrNotImplemented)
	}
	spec, err := ocispec.ReadSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("%s/config.json has no process: %w", r.Bundle, errdefs.ErrInvalidArgument)
	}
	spec.Process.Terminal = r.Terminal
	hooks, err := ocispec.SplitHooks(spec)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", r.ID, err)
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	annotations, err := trustedAnnotations(spec.Annotations)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", r.ID, err)
	}
	r0, err := containerRole(annotations)
	if err != nil {
		return nil, err
	}
	if err := checkHostHooks(r.ID, r0, hooks); err != nil {
		return nil, err
	}
	if err := s.reserve(r.ID); err != nil {
		return nil, err
	}
	// hooksRan is the container once its create's hooks ran: a create
	// that fails after them runs its poststop hooks once the VM is gone
	// (as runc does when it destroys a failed create), so that what they
	// set up on the host (nerdctl's CNI reservation) is released.
	var hooksRan *container
	defer func() {
		if retErr != nil {
			s.unreserve(ctx, r.ID)
			if hooksRan != nil {
				s.warnHooks(ctx, "poststop", hooksRan, hooksRan.hooks.Poststop, specs.StateStopped)
			}
		}
	}()
	plan, err := podSpec(spec, r0, s.guestNsPid, s.podShmSource())
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", r.ID, err)
	}
	if err := checkHookNetwork(r.ID, hooks, plan); err != nil {
		return nil, err
	}
	plan.ownNetNS = ownNetwork(spec, r0, hooks)
	sb, err := s.sandbox(ctx, sandboxRequest{
		namespace: ns, id: r.ID, bundle: r.Bundle, opts: r.Options, spec: spec, annotations: annotations, role: r0, plan: plan,
		hostHooks: !hooks.Empty(),
	})
	if err != nil {
		return nil, err
	}
	c := &container{id: r.ID, bundle: r.Bundle, role: r0, hooks: hooks, annotations: spec.Annotations, execs: map[string]*proc{}}
	// The create's hooks run once the VM (and with it the VMM's network
	// namespace) exists, before the container is made in it; what they
	// set up in the namespace is then mirrored into the VM.
	hooksRan = c
	if err := hooks.BeforeStart(ctx, s.hookState(c, specs.StateCreating)); err != nil {
		return nil, fmt.Errorf("container %s: %w", r.ID, err)
	}
	if plan.ownNetNS {
		dns, err := specDNS(spec)
		if err != nil {
			return nil, err
		}
		if err := sb.AttachOwnNetwork(ctx, dns); err != nil {
			return nil, fmt.Errorf("container %s: its network: %w", r.ID, err)
		}
	}
	if r0 == rolePodMember {
		if err := s.growFor(ctx, sb, r.ID, spec); err != nil {
			return nil, fmt.Errorf("container %s: %w", r.ID, err)
		}
	}
	paths := stdioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}
	pio, err := openIO(ctx, ns, r.ID, paths)
	if err != nil {
		return nil, err
	}
	rootfs := make([]storage.Mount, 0, len(r.Rootfs))
	for _, m := range r.Rootfs {
		rootfs = append(rootfs, storage.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
	}
	sc, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
		ID:          r.ID,
		Bundle:      r.Bundle,
		Spec:        spec,
		Rootfs:      rootfs,
		GuestMounts: plan.guestMounts,
		PodUID:      annotations[podUIDAnnotation],
		Stdio:       pio.stdio(r.Terminal),
		PodSandbox:  r0 == rolePodSandbox,
	})
	if err != nil {
		pio.Close(ctx)
		return nil, err
	}
	c.c, c.init = sc, newProc("", paths, nil)
	c.init.prepare(sc.Init(), pio)
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	s.events.publish(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         s.hostPid(),
	})
	return &taskapi.CreateTaskResponse{Pid: s.hostPid()}, nil
}

// reserve claims a container ID for a create.
func (s *service) reserve(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[id]; ok {
		return fmt.Errorf("container %s: %w", id, errdefs.ErrAlreadyExists)
	}
	s.containers[id] = nil
	return nil
}

// unreserve drops a failed create's ID, and the sandbox when nothing else
// is in it.
func (s *service) unreserve(ctx context.Context, id string) {
	s.mu.Lock()
	delete(s.containers, id)
	delete(s.grown, id)
	empty := len(s.containers) == 0
	s.mu.Unlock()
	if empty {
		s.stopSandbox(ctx)
	}
}

// sandboxRequest is what the sandbox of a container's create needs.
type sandboxRequest struct {
	// namespace is the containerd namespace of the request.
	namespace  string
	id, bundle string
	opts       *anypb.Any
	// spec is the container's guest spec (after podSpec).
	spec *specs.Spec
	// annotations are the runtime annotations of spec hull trusts
	// (trustedAnnotations).
	annotations map[string]string
	role        role
	plan        guestPlan
	// hostHooks says the container has host hooks, which the
	// configuration must allow (runtime.host_hooks).
	hostHooks bool
}

// sandbox returns the pod's sandbox, starting it for the first container:
// sized by the pod's annotations, with the pod's network namespace
// mirrored into it. Each container's bundle gets the record `shim delete`
// needs.
func (s *service) sandbox(ctx context.Context, r sandboxRequest) (*sandbox.Sandbox, error) {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	s.mu.Lock()
	sb, rec := s.sb, record{SandboxID: s.sandboxID, VMID: s.vmID, StateRoot: s.stateRoot}
	s.mu.Unlock()
	annotations := r.annotations
	if sb != nil {
		s.mu.Lock()
		allow := s.allowAnnotations
		s.mu.Unlock()
		if err := checkHullAnnotations(allow, r.spec.Annotations); err != nil {
			return nil, fmt.Errorf("container %s: %w", r.id, err)
		}
		if want := sandboxID(r.id, annotations); want != rec.SandboxID {
			return nil, fmt.Errorf("container %s belongs to sandbox %s, this shim serves %s: %w", r.id, want, rec.SandboxID, errdefs.ErrFailedPrecondition)
		}
		if r.role != rolePodMember {
			return nil, fmt.Errorf("container %s is a %s, but sandbox %s runs already: %w", r.id, r.role, rec.SandboxID, errdefs.ErrFailedPrecondition)
		}
		return sb, writeRecord(r.bundle, rec)
	}
	if r.role == rolePodMember {
		return nil, fmt.Errorf("container %s joins pod %s, whose sandbox container this shim does not run: %w", r.id, sandboxID(r.id, annotations), errdefs.ErrFailedPrecondition)
	}

	cfg, err := loadConfig(r.opts)
	if err != nil {
		return nil, err
	}
	if r.hostHooks && !cfg.Runtime.HostHooks {
		return nil, fmt.Errorf("container %s has hooks that run on the host, which the shim runs only with runtime.host_hooks = true: %w", r.id, errdefs.ErrNotImplemented)
	}
	if err := applyLogLevel(log.G(s.bg).Logger, cfg.Runtime.LogLevel); err != nil {
		return nil, fmt.Errorf("runtime.log_level: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	allow, err := compileAllowList(cfg.Runtime.EnableAnnotations)
	if err != nil {
		return nil, err
	}
	if err := checkHullAnnotations(allow, r.spec.Annotations); err != nil {
		return nil, fmt.Errorf("container %s: %w", r.id, err)
	}
	podID := sandboxID(r.id, annotations)
	rec = record{SandboxID: podID, VMID: vmID(r.namespace, podID), StateRoot: cfg.Runtime.StateDir}
	if warm := s.warmSandbox(); warm != nil {
		rec.WarmID = warm.ID()
	}
	if err := writeRecord(r.bundle, rec); err != nil {
		return nil, err
	}
	sc, err := launch.SandboxConfig(cfg, rec.VMID)
	if err != nil {
		return nil, err
	}
	if r.spec.Hostname != "" {
		sc.Hostname = r.spec.Hostname
	}
	// QEMU and virtiofsd go where containerd put the sandbox container:
	// for a CRI pod its cgroupsPath is below the pod's cgroup.
	if r.spec.Linux != nil && r.spec.Linux.CgroupsPath != "" {
		if sc.Cgroup.Path, err = hostcgroup.Resolve(r.spec.Linux.CgroupsPath, "", ""); err != nil {
			return nil, err
		}
		if sc.Cgroup.Unit, _, err = hostcgroup.SystemdUnit(r.spec.Linux.CgroupsPath); err != nil {
			return nil, err
		}
	}
	maxVCPUs, maxMemoryMiB := launch.Limits(cfg)
	limit := vmSize{maxVCPUs, maxMemoryMiB}
	size, static, err := podSize(vmSize{sc.VM.VCPUs, sc.VM.MemoryMiB}, limit, annotations)
	if err != nil {
		return nil, err
	}
	sc.VM.VCPUs, sc.VM.MemoryMiB = size.vcpus, size.memoryMiB
	sc.NetNS = r.plan.netns
	if r.plan.ownNetNS {
		sc.VM.OwnNetNS = true
		sc.VM.HotplugNICs = max(sc.VM.HotplugNICs, ownNetNICs)
	}
	if sc.NetNS != "" {
		if sc.DNS, err = specDNS(r.spec); err != nil {
			return nil, err
		}
	}
	sc.ShmSize = tmpfsSize(r.plan.shmSource)
	col := podmetrics.NewCollector(podmetrics.LabelsFor(podID, annotations), podmetrics.Source{})
	sc.ObserveAgentRPC = col.ObserveRPC
	sc.Tracing = s.tracingExporter()
	sb, start, err := s.startSandbox(ctx, sc)
	if err != nil {
		return nil, err
	}
	if warmID := rec.WarmID; warmID != "" {
		// The warm sandbox is the pod's now, or stopped: delete must not
		// look for its ID, which a factory may give another.
		rec.WarmID = ""
		if err := writeRecord(r.bundle, rec); err != nil {
			log.G(ctx).WithError(err).WithField("warm_sandbox", warmID).Warn("the bundle record still names the warm sandbox")
		}
	}
	s.mu.Lock()
	s.start = start
	s.sb, s.sandboxID, s.vmID, s.stateRoot = sb, rec.SandboxID, rec.VMID, rec.StateRoot
	s.vmPid = vmPid(sb)
	s.podShm = r.plan.shmSource
	s.base, s.size, s.limit, s.sizedByAnnotations = size, size, alignLimit(size, limit), static
	s.grown = map[string]vmSize{}
	s.allowAnnotations = allow
	s.collector = col
	s.mu.Unlock()
	s.serveMetrics(ctx, sb, col)
	go s.forwardOOM(sb)
	log.G(ctx).WithFields(log.Fields{
		"sandbox": rec.VMID, "vcpus": size.vcpus, "memory_mib": size.memoryMiB, "netns": sc.NetNS, "start": start,
		"phases": sandbox.FormatPhases(sb.BootPhases()),
	}).Info("sandbox started")
	return sb, nil
}

// growFor hot-adds a pod member's CPU and memory limits to the VM when the
// pod's sizing annotations did not already count them. The VM grows to its
// boot size plus the limits of the live members, so a container restarted
// under a new ID (its predecessor deleted) adds nothing new. A VM that
// cannot grow (microvm, no free slot) runs the container all the same: its
// cgroup in the guest still enforces its limits. Limits that would take the
// VM beyond its cap (hypervisor.max_vcpus, max_memory_mib) refuse the
// container with an ErrInvalidArgument-class error.
func (s *service) growFor(ctx context.Context, sb *sandbox.Sandbox, id string, spec *specs.Spec) error {
	// One growth at a time, so that each counts on the one before.
	s.growMu.Lock()
	defer s.growMu.Unlock()
	s.mu.Lock()
	if s.sizedByAnnotations || s.grown == nil {
		s.mu.Unlock()
		return nil
	}
	s.grown[id] = containerGrowth(spec)
	cur := s.size
	want, err := growthTarget(s.base, cur, s.limit, s.grown)
	if err != nil {
		delete(s.grown, id)
		s.mu.Unlock()
		return fmt.Errorf("its limits: %w", err)
	}
	s.mu.Unlock()
	if want == cur {
		return nil
	}
	logger := log.G(ctx).WithFields(log.Fields{"container": id, "vcpus": want.vcpus, "memory_mib": want.memoryMiB})
	if err := sb.Resize(ctx, want.vcpus, want.memoryMiB); err != nil {
		logger.WithError(err).Warn("growing the VM for a container failed; it runs within the VM's current size")
		return nil
	}
	s.mu.Lock()
	s.size = want
	s.mu.Unlock()
	logger.Info("VM grown for a container")
	return nil
}

// podShmSource is the host source of the pod sandbox's /dev/shm.
func (s *service) podShmSource() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.podShm
}

// forwardOOM publishes the sandbox's OOM kills until it stops. The sandbox
// delivers only the IDs of its own containers, within a rate limit; an ID
// that is not a task of this shim as well is dropped.
func (s *service) forwardOOM(sb *sandbox.Sandbox) {
	for id := range sb.OOMEvents() {
		if _, err := s.container(id); err != nil {
			log.G(s.bg).WithField("sandbox", sb.ID()).Debug("dropped an OOM event for a container that is not a task of this shim")
			continue
		}
		s.events.publish(&eventstypes.TaskOOM{ContainerID: id})
	}
}

// stopSandbox stops the pod's VM, when it runs.
func (s *service) stopSandbox(ctx context.Context) {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	s.mu.Lock()
	sb := s.sb
	s.sb = nil
	s.podShm = ""
	s.mu.Unlock()
	if sb == nil {
		return
	}
	s.stopMetrics(ctx)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := sb.Stop(ctx); err != nil {
		log.G(ctx).WithError(err).Error("stopping the sandbox")
		return
	}
	log.G(ctx).WithField("sandbox", sb.ID()).Info("sandbox stopped")
}

// container returns a task by ID.
func (s *service) container(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[id]
	if c == nil {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// process returns a task and its init process (empty execID) or one of its
// execs.
func (s *service) process(id, execID string) (*container, *proc, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.proc(execID)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// Start runs a container's program, or an exec added by Exec.
func (s *service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return s.startExec(ctx, c, r.ExecID)
	}
	if err := c.c.Start(ctx); err != nil {
		s.countContainer(ctx, err)
		return nil, err
	}
	s.countContainer(ctx, nil)
	c.init.markRunning()
	pid := s.pidOf(c.init)
	s.events.publish(&eventstypes.TaskStart{ContainerID: c.id, Pid: pid})
	go s.watch(c, c.init)
	s.warnHooks(ctx, "poststart", c, c.hooks.Poststart, specs.StateRunning)
	return &taskapi.StartResponse{Pid: pid}, nil
}

func (s *service) startExec(ctx context.Context, c *container, execID string) (*taskapi.StartResponse, error) {
	p, err := c.proc(execID)
	if err != nil {
		return nil, err
	}
	if p.isRunning() || p.exited() {
		return nil, fmt.Errorf("exec %s of container %s already started: %w", execID, c.id, errdefs.ErrFailedPrecondition)
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	pio, err := openIO(ctx, ns, c.id, p.paths)
	if err != nil {
		return nil, err
	}
	sp, err := c.c.Exec(ctx, execID, p.spec, pio.stdio(p.paths.terminal))
	if err != nil {
		pio.Close(ctx)
		return nil, err
	}
	p.prepare(sp, pio)
	p.markRunning()
	pid := s.hostPid()
	s.events.publish(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: execID, Pid: pid})
	go s.watch(c, p)
	return &taskapi.StartResponse{Pid: pid}, nil
}

// Delete removes an exited exec, or a container that is not running; the
// last container's delete stops the VM.
func (s *service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return s.deleteExec(c, r.ExecID)
	}
	// An init process whose exit is known is gone even if the sandbox has
	// not yet seen it: force then only removes what is left.
	if err := c.c.Delete(ctx, c.init.exited()); err != nil {
		return nil, err
	}
	if c.init.isRunning() {
		// The sandbox knew of the exit before the watcher recorded it.
		if _, _, err := c.init.wait(ctx); err != nil {
			return nil, err
		}
	}
	c.init.closeIO(ctx)
	c.init.finish(0, time.Now())
	status, at := c.init.exit()
	pid := s.pidOf(c.init)
	s.mu.Lock()
	delete(s.containers, c.id)
	delete(s.grown, c.id)
	last := len(s.containers) == 0
	s.mu.Unlock()
	if last {
		s.stopSandbox(ctx)
	}
	// After the VM: a network hook's teardown (nerdctl's CNI DEL) finds
	// the namespace gone with the VMM, as it would find runc's.
	s.warnHooks(ctx, "poststop", c, c.hooks.Poststop, specs.StateStopped)
	s.events.publish(&eventstypes.TaskDelete{
		ContainerID: c.id,
		Pid:         pid,
		ExitStatus:  status,
		ExitedAt:    timestamppb.New(at),
	})
	return &taskapi.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: timestamppb.New(at)}, nil
}

func (s *service) deleteExec(c *container, execID string) (*taskapi.DeleteResponse, error) {
	p, err := c.proc(execID)
	if err != nil {
		return nil, err
	}
	if p.isRunning() && !p.exited() {
		return nil, fmt.Errorf("exec %s of container %s is running: %w", execID, c.id, errdefs.ErrFailedPrecondition)
	}
	c.mu.Lock()
	delete(c.execs, execID)
	c.mu.Unlock()
	// An exec that never started is done with.
	p.finish(0, time.Now())
	status, at := p.exit()
	return &taskapi.DeleteResponse{Pid: s.pidOf(p), ExitStatus: status, ExitedAt: timestamppb.New(at)}, nil
}

// Connect reports the shim's and the task's PIDs (the task's is the VMM's,
// see pids.go).
func (s *service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if c, err := s.container(r.ID); err == nil {
		resp.TaskPid = s.pidOf(c.init)
	}
	return resp, nil
}

// Shutdown ends the shim once no container is left in it.
func (s *service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 {
		return &emptypb.Empty{}, nil
	}
	s.stopSandbox(ctx)
	s.shutdown.Shutdown()
	return &emptypb.Empty{}, nil
}
