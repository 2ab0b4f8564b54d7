package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// ErrNotAdoptable is returned (wrapped, with a *NotAdoptableError saying
// why) by Adopt when the pod's configuration cannot be met by the warm
// sandbox's VM: the caller stops the warm sandbox and starts a sandbox
// for the pod instead.
var ErrNotAdoptable = fmt.Errorf("warm sandbox not adoptable: %w", errdefs.ErrFailedPrecondition)

// NotAdoptableError says which part of a pod's configuration a warm
// sandbox cannot meet. It wraps ErrNotAdoptable.
type NotAdoptableError struct {
	// Field names the configuration ("vm.kernel", "transport", ...).
	Field string
	// Reason says how it differs.
	Reason string
}

func (e *NotAdoptableError) Error() string {
	return fmt.Sprintf("%s: %s: %s", ErrNotAdoptable, e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrNotAdoptable) true.
func (e *NotAdoptableError) Unwrap() error { return ErrNotAdoptable }

func notAdoptable(field, format string, args ...any) error {
	return &NotAdoptableError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// WarmIDPrefix starts the placeholder IDs of warm sandboxes (NewWarmID).
const WarmIDPrefix = "warm-"

// NewWarmID returns a placeholder ID for a warm sandbox: WarmIDPrefix and
// 16 random hex digits.
func NewWarmID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return WarmIDPrefix + hex.EncodeToString(b[:]), nil
}

// warmBoot is what a warm sandbox was booted with, for Adopt to compare
// with its pod's configuration.
type warmBoot struct {
	cfg Config
	// files identifies the files the VM booted from (bootFiles), as they
	// were when its boot ended.
	files map[string]fileIdentity
}

// fileIdentity tells a file from one put in its place or changed since: an
// agent rebuilt into an initrd of the same name, a QEMU upgraded in place.
type fileIdentity struct {
	dev, ino uint64
	size     int64
	mtime    unix.Timespec
	ctime    unix.Timespec
}

// bootFiles are the host files a VM boots from: its kernel, initrd, root
// image and hypervisor binary.
func bootFiles(vm hypervisor.Config, binary string) []string {
	files := []string{vm.Kernel, vm.Initrd, binary}
	if vm.RootImage != nil {
		files = append(files, vm.RootImage.Path)
	}
	return slices.DeleteFunc(files, func(f string) bool { return f == "" })
}

// identify returns the identities of files.
func identify(files []string) (map[string]fileIdentity, error) {
	ids := make(map[string]fileIdentity, len(files))
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Stat(f, &st); err != nil {
			return nil, fmt.Errorf("boot file: %w", err)
		}
		ids[f] = fileIdentity{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
	}
	return ids, nil
}

// changedFile names a file of want that is no longer what it was.
func changedFile(want map[string]fileIdentity) (string, error) {
	for _, f := range slices.Sorted(maps.Keys(want)) {
		now, err := identify([]string{f})
		if err != nil {
			return f, err
		}
		if now[f] != want[f] {
			return f, nil
		}
	}
	return "", nil
}

// StartWarm boots a sandbox that belongs to no pod yet, for a VM factory to
// keep until a pod adopts it (Adopt): Start's boot steps (state directory,
// empty shared storage, cgroup, virtiofsd, VM, agent connection) and none
// of the pod's (guest sandbox and hostname, network, debug consoles).
// With cfg.WarmUp its last step ("warm up") runs and removes a throwaway
// container in the guest (see Config.WarmUp); a failed warm-up fails the
// start.
//
// cfg.ID is the placeholder the sandbox is known by until adopted (the
// state directory StateDir(cfg.StateRoot, cfg.ID)); empty picks one with
// NewWarmID. cfg.Cgroup.Path is required: the warm sandbox's own cgroup
// (below the factory's), which Adopt leaves for the pod's. cfg.NetNS must
// be empty: a pod network is hot-added at adoption, into the
// cfg.VM.HotplugNICs slots reserved at boot. cfg.ObserveAgentRPC and
// cfg.Tracing serve until adoption (the pod's then observe the agent
// calls; the agent connection keeps the tracer provider it was made
// with). A failed StartWarm leaves nothing behind.
func StartWarm(ctx context.Context, cfg Config) (*Sandbox, error) {
	if cfg.ID == "" {
		id, err := NewWarmID()
		if err != nil {
			return nil, err
		}
		cfg.ID = id
	}
	var errs []error
	if err := validate(cfg); err != nil {
		errs = append(errs, err)
	}
	if cfg.NetNS != "" {
		errs = append(errs, errors.New("a warm sandbox has no pod network"))
	}
	if cfg.Cgroup.Path == "" {
		errs = append(errs, errors.New("a warm sandbox needs a cgroup of its own (Cgroup.Path)"))
	}
	if cfg.WarmUp && !filepath.IsAbs(cfg.WarmUpBinary) {
		errs = append(errs, fmt.Errorf("warm-up binary %q is not an absolute path", cfg.WarmUpBinary))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("warm sandbox: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return startAttempts(ctx, cfg, func(ctx context.Context, cfg Config, ep hypervisor.AgentEndpoint) (*Sandbox, error) {
		return boot(ctx, cfg, ep, true)
	})
}

// Warm reports whether the sandbox was booted by StartWarm and not yet
// given to Adopt.
func (s *Sandbox) Warm() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.warm != nil
}

// Adopt makes a warm sandbox (StartWarm) the pod's that cfg describes, as
// Start would have started it: it checks that the parts of cfg fixed when
// the VM booted match (an error wrapping ErrNotAdoptable, with a
// *NotAdoptableError, when they do not), renames the state directory to
// StateDir(cfg.StateRoot, cfg.ID) with the paths of its holders following
// and the record rewritten, moves QEMU and virtiofsd into the pod's cgroup
// cfg.Cgroup (the warm one is removed), then runs Start's pod steps (guest
// clock, guest sandbox with cfg's hostname, pod network hot-added, guest
// network, debug consoles) and grows the VM to cfg.VM's size. Its phases
// (BootPhases) are the adoption's.
//
// A successful adoption counts as a sandbox start in the node's start
// counts (package startcount); a failed one does not, since its caller
// starts the pod cold. A sandbox is given to Adopt once. After an error the
// caller stops it (Stop releases whatever the adoption made); nothing else
// is left.
func (s *Sandbox) Adopt(ctx context.Context, cfg Config) (retErr error) {
	s.mu.Lock()
	w := s.warm
	s.warm = nil
	s.mu.Unlock()
	if w == nil {
		return fmt.Errorf("sandbox %s is not a warm sandbox: %w", s.id, errdefs.ErrFailedPrecondition)
	}
	if err := validate(cfg); err != nil {
		return err
	}
	warmID := s.id
	tr := tracer(cfg.Tracing)
	ctx, span := tr.Start(ctx, "sandbox adopt", trace.WithAttributes(sandboxAttr(cfg.ID), attribute.String("hull.warm_sandbox_id", warmID)))
	defer func() { endSpan(span, retErr) }()
	start := time.Now()
	s.phases = nil
	// What the pod steps push is what Stop releases (the network, the
	// consoles): the caller stops a sandbox whose adoption failed.
	var undo cleanups
	steps := []step{
		{name: "check warm vm", run: func(ctx context.Context) error {
			return s.adoptable(w, cfg)
		}},
		{name: "move state directory", run: func(ctx context.Context) error {
			s.killTimeout = cfg.KillTimeout
			if s.killTimeout == 0 {
				s.killTimeout = DefaultKillTimeout
			}
			s.setObserver(cfg.ObserveAgentRPC)
			// Host-side only: where the pod's emptyDir volumes are
			// recognised, the adopting runtime's configuration.
			s.kubeletPods = kubeletPods(cfg)
			return s.moveStateDir(cfg)
		}},
		{name: "move to pod cgroup", run: func(ctx context.Context) error {
			return s.moveCgroup(ctx, cfg)
		}},
	}
	// The pod network goes into the slots the warm VM reserved: a pod
	// configured for a cold start (the shim's) reserves none, its network
	// being attached at boot.
	podCfg := cfg
	podCfg.VM.HotplugNICs = w.cfg.VM.HotplugNICs
	steps = append(steps, s.podSteps(podCfg, true, &undo)...)
	steps = append(steps, step{name: "grow vm", run: func(ctx context.Context) error {
		if cfg.VM.VCPUs <= w.cfg.VM.VCPUs && cfg.VM.MemoryMiB <= w.cfg.VM.MemoryMiB {
			return nil
		}
		return s.Resize(ctx, max(cfg.VM.VCPUs, w.cfg.VM.VCPUs), max(cfg.VM.MemoryMiB, w.cfg.VM.MemoryMiB))
	}})
	if err := s.runSteps(ctx, tr, cfg.ID, "adopting", steps); err != nil {
		return err
	}
	// A failed adoption is not counted: the caller starts the pod cold,
	// and Start counts that.
	countStart(ctx, cfg.StateRoot, nil)
	log.G(ctx).WithFields(log.Fields{"sandbox": cfg.ID, "warm_sandbox": warmID, "took": time.Since(start)}).Info("warm sandbox adopted")
	return nil
}

// adoptable checks that the warm sandbox can become the sandbox cfg
// describes: its VM runs, its driver can change hands, and what cfg fixes
// at boot is what the VM booted with (adoptMismatch, and the driver's
// description of the VM cfg would make).
func (s *Sandbox) adoptable(w *warmBoot, cfg Config) error {
	if st := s.State(); st != StateRunning {
		return notAdoptable("state", "the warm sandbox is %s", st)
	}
	if !s.vmAlive() {
		return notAdoptable("vm", "the warm vm exited")
	}
	if s.virtiofs != nil {
		// Exited, or dead and not reaped yet.
		select {
		case <-s.virtiofs.Done():
			return notAdoptable("virtiofs", "the warm sandbox's virtiofsd exited")
		default:
			if !s.virtiofs.Process().Running() {
				return notAdoptable("virtiofs", "the warm sandbox's virtiofsd exited")
			}
		}
	}
	if err := adoptMismatch(w.cfg, cfg); err != nil {
		return err
	}
	if _, err := hypervisor.AsRelocator(s.vm); err != nil {
		return notAdoptable("driver", "%v", err)
	}
	// What cfg's driver would run: the binary, machine and accelerator
	// live in the driver's options, out of Config's sight.
	pod, err := cfg.NewVM(s.vmConfig(cfg, s.vm.Agent()))
	if err != nil {
		return fmt.Errorf("the pod's vm configuration: %w", err)
	}
	if err := descriptionMismatch(s.vm.Describe(), pod.Describe()); err != nil {
		return err
	}
	// The same paths may hold other files by now.
	if f, err := changedFile(w.files); f != "" {
		if err != nil {
			return notAdoptable("vm.files", "%s: %v", f, err)
		}
		return notAdoptable("vm.files", "%s changed since the warm vm booted", f)
	}
	return nil
}

// adoptMismatch says which boot-fixed part of a pod's configuration pod
// differs from the configuration warm a warm sandbox booted with, as a
// *NotAdoptableError; nil when the VM can serve the pod. The VM's size
// may grow (within warm's limits), never shrink.
func adoptMismatch(warm, pod Config) error {
	differs := func(field string, a, b any) error {
		return notAdoptable(field, "warm %v, pod %v", a, b)
	}
	w, p := warm.VM, pod.VM
	switch {
	case warm.StateRoot != pod.StateRoot:
		return differs("state_root", warm.StateRoot, pod.StateRoot)
	case warm.Transport != pod.Transport:
		return differs("transport", warm.Transport, pod.Transport)
	case warm.VsockPort != pod.VsockPort:
		return differs("vsock_port", warm.VsockPort, pod.VsockPort)
	case warm.VsockFallback != pod.VsockFallback:
		return differs("vsock_fallback", warm.VsockFallback, pod.VsockFallback)
	case warm.AgentLogLevel != pod.AgentLogLevel:
		return differs("agent_log_level", warm.AgentLogLevel, pod.AgentLogLevel)
	case warm.DebugConsole != pod.DebugConsole:
		return differs("debug_console", warm.DebugConsole, pod.DebugConsole)
	case (warm.Tracing != nil) != (pod.Tracing != nil):
		return differs("tracing", warm.Tracing != nil, pod.Tracing != nil)
	case warm.AgentLogMax != pod.AgentLogMax:
		return differs("agent_log_max", warm.AgentLogMax, pod.AgentLogMax)
	case warm.CallTimeout != pod.CallTimeout:
		return differs("call_timeout", warm.CallTimeout, pod.CallTimeout)
	case warm.Virtiofs != pod.Virtiofs:
		return differs("virtiofs", warm.Virtiofs, pod.Virtiofs)
	case sharesFS(warm) != sharesFS(pod):
		return differs("shared_fs", warm.SharedFS, pod.SharedFS)
	case copyLimits(warm) != copyLimits(pod):
		return differs("copy limits", copyLimits(warm), copyLimits(pod))
	case w.Kernel != p.Kernel:
		return differs("vm.kernel", w.Kernel, p.Kernel)
	case w.Initrd != p.Initrd:
		return differs("vm.initrd", w.Initrd, p.Initrd)
	case !reflect.DeepEqual(w.RootImage, p.RootImage):
		return differs("vm.root_image", w.RootImage, p.RootImage)
	case !slices.Equal(w.KernelParams, p.KernelParams):
		return differs("vm.kernel_params", w.KernelParams, p.KernelParams)
	case w.OwnNetNS != p.OwnNetNS:
		return differs("vm.own_netns", w.OwnNetNS, p.OwnNetNS)
	case w.Debug != p.Debug:
		return differs("vm.debug", w.Debug, p.Debug)
	case w.SharedMemory != p.SharedMemory:
		return differs("vm.shared_memory", w.SharedMemory, p.SharedMemory)
	case w.MaxVCPUs != p.MaxVCPUs:
		return differs("vm.max_vcpus", w.MaxVCPUs, p.MaxVCPUs)
	case w.MaxMemoryMiB != p.MaxMemoryMiB:
		return differs("vm.max_memory_mib", w.MaxMemoryMiB, p.MaxMemoryMiB)
	case p.HotplugNICs > w.HotplugNICs:
		return notAdoptable("vm.hotplug_nics", "the pod asks for %d NIC hotplug slots, the warm vm has %d", p.HotplugNICs, w.HotplugNICs)
	case p.HotplugBlocks > w.HotplugBlocks:
		return notAdoptable("vm.hotplug_blocks", "the pod asks for %d disk hotplug slots, the warm vm has %d", p.HotplugBlocks, w.HotplugBlocks)
	case !slices.Equal(w.Filesystems, p.Filesystems):
		return differs("vm.filesystems", w.Filesystems, p.Filesystems)
	case !slices.Equal(w.Blocks, p.Blocks):
		return differs("vm.blocks", w.Blocks, p.Blocks)
	case !reflect.DeepEqual(w.Networks, p.Networks):
		return differs("vm.networks", len(w.Networks), len(p.Networks))
	case p.VCPUs < w.VCPUs:
		return notAdoptable("vm.vcpus", "the pod asks for %d, the warm vm has %d and cannot shrink", p.VCPUs, w.VCPUs)
	case p.VCPUs > w.VCPUs && p.VCPUs > w.MaxVCPUs:
		return notAdoptable("vm.vcpus", "the pod asks for %d, the warm vm can grow to %d", p.VCPUs, max(w.VCPUs, w.MaxVCPUs))
	case p.MemoryMiB < w.MemoryMiB:
		return notAdoptable("vm.memory_mib", "the pod asks for %d, the warm vm has %d and cannot shrink", p.MemoryMiB, w.MemoryMiB)
	case p.MemoryMiB > w.MemoryMiB && p.MemoryMiB > w.MaxMemoryMiB:
		return notAdoptable("vm.memory_mib", "the pod asks for %d, the warm vm can grow to %d", p.MemoryMiB, max(w.MemoryMiB, w.MaxMemoryMiB))
	case pod.Cgroup.Path == "":
		return notAdoptable("cgroup", "the pod names no cgroup to move the warm vm into")
	case pod.NetNSOwn:
		return notAdoptable("netns_own", "a runtime's own network namespace is attached at boot only")
	case pod.NetNS != "" && w.HotplugNICs == 0:
		return notAdoptable("vm.hotplug_nics", "the pod has a network and the warm vm no NIC hotplug slot")
	}
	return nil
}

// descriptionMismatch compares what the warm VM's driver runs with what the
// pod's configuration would run: the program, the machine and CPU the
// guest sees, and the hypervisor's own confinement (the user it drops to).
func descriptionMismatch(warm, pod hypervisor.Description) error {
	for _, f := range []struct{ field, w, p string }{
		{"hypervisor.driver", warm.Driver, pod.Driver},
		{"hypervisor.binary", warm.Binary, pod.Binary},
		{"hypervisor.machine", warm.Machine, pod.Machine},
		{"hypervisor.accel", warm.Accel, pod.Accel},
		{"hypervisor.cpu_model", warm.CPUModel, pod.CPUModel},
		{"hypervisor.run_as_uids", warm.RunAsUIDs, pod.RunAsUIDs},
		{"hypervisor.free_page_reporting", strconv.FormatBool(warm.FreePageReporting), strconv.FormatBool(pod.FreePageReporting)},
		{"hypervisor.qemu.firmware", warm.Firmware, pod.Firmware},
	} {
		if f.w != f.p {
			return notAdoptable(f.field, "warm %q, pod %q", f.w, f.p)
		}
	}
	return nil
}

// moveStateDir renames the state directory to the pod's, each holder of a
// path below it (the VM driver, virtiofsd, the shared storage, the agent
// log) holding its use of the directory meanwhile and following it, then
// rewrites the record under the pod's ID. Nothing is searched for: each
// holder rebases the paths it made.
func (s *Sandbox) moveStateDir(cfg Config) error {
	r, err := hypervisor.AsRelocator(s.vm)
	if err != nil {
		return err
	}
	old, dir := s.stateDir, StateDir(cfg.StateRoot, cfg.ID)
	rename := func() error {
		// Never onto another sandbox's directory, not even an empty one.
		if err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("sandbox %s exists: %w", cfg.ID, errdefs.ErrAlreadyExists)
			}
			return fmt.Errorf("renaming %s to %s: %w", old, dir, err)
		}
		return nil
	}
	move := func() error { return child.MoveLogs(old, dir, rename, s.agentLog) }
	if sh := s.storage; sh != nil {
		inner := move
		move = func() error { return sh.MoveDir(old, dir, inner) }
	}
	if d := s.virtiofs; d != nil {
		inner := move
		move = func() error { return d.MoveDir(old, dir, inner) }
	}
	// The span relay names the sandbox: it stops before the ID changes,
	// and starts again under the pod's ID, through the pod's exporter (a
	// failed adoption leaves it stopped; Stop is next). The guest keeps
	// the spans meanwhile.
	relay := s.guestSpans != nil && cfg.Tracing != nil
	if relay {
		s.endRelay()
	}
	if err := r.MoveStateDir(dir, move); err != nil {
		return err
	}
	s.id, s.stateDir = cfg.ID, dir
	if s.client != nil {
		s.client.SetLog(s.agentLogEntry(cfg.ID))
	}
	if relay {
		s.startRelay(cfg.Tracing)
	}
	return writeRecord(dir, s.record())
}

// moveCgroup moves virtiofsd and the VM into the pod's cgroup, made (or
// found) with the limits of cfg's VM size as Start's would be, rewrites the
// record, and removes the warm cgroup. On cgroup v1 kernels that still can,
// the memory the warm processes use moves with them (MoveCharges); on
// cgroup v2 (and recent v1 kernels, which removed charge moving) it stays charged to the warm
// cgroup's ancestors (the factory's), and the pod's cgroup is charged from
// the adoption on. On error the processes are put back and the pod's
// cgroup removed.
func (s *Sandbox) moveCgroup(ctx context.Context, cfg Config) error {
	r, err := hypervisor.AsRelocator(s.vm)
	if err != nil {
		return err
	}
	old := s.cgroup
	hc, err := newHostCgroup(cfg.Cgroup, cfg.VM.VCPUs, cfg.VM.MemoryMiB)
	if err != nil {
		return err
	}
	moved, err := hc.g.MoveCharges()
	if err != nil {
		return errors.Join(err, hc.g.Delete())
	}
	// virtiofsd first: on a systemd host its move starts the pod's scope,
	// which the VM driver then finds.
	// A sandbox without the shared file system has no virtiofsd.
	back := func() error { return nil }
	if s.virtiofs != nil {
		vfs := s.virtiofs.PID()
		back = func() error { return old.g.AddTree(vfs) }
		if err := hc.g.AddTree(vfs); err != nil {
			return errors.Join(err, back(), hc.g.Delete())
		}
	}
	if err := r.MoveCgroup(hc.g.Path()); err != nil {
		return errors.Join(err, r.MoveCgroup(old.g.Path()), back(), hc.g.Delete())
	}
	s.cgroup = hc
	// The processes have left the warm cgroup: it goes whether or not
	// the record is rewritten (Stop removes s.cgroup alone).
	recErr := writeRecord(s.stateDir, s.record())
	if err := old.g.Delete(); err != nil {
		log.G(ctx).WithError(err).WithField("sandbox", cfg.ID).Warn("removing the warm sandbox's cgroup; it is removed at stop")
		s.retiredCgroups = append(s.retiredCgroups, old.g)
	}
	if recErr != nil {
		return recErr
	}
	log.G(ctx).WithFields(log.Fields{
		"sandbox": cfg.ID, "cgroup": hc.g.Path(), "warm_cgroup": old.g.Path(), "created": hc.g.Created(), "charges_moved": moved,
		"memory_limit_mib": cfg.VM.MemoryMiB + cfg.Cgroup.MemoryOverheadMiB,
	}).Debug("sandbox moved to the pod's cgroup")
	return nil
}
