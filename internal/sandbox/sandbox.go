package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/bootslot"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/netpod"
	"github.com/hull-runtime/hull/internal/startcount"
	"github.com/hull-runtime/hull/internal/storage"
	"github.com/hull-runtime/hull/internal/tracing"
	"github.com/hull-runtime/hull/internal/virtiofs"
)

// consoleTailLines is how much of the guest console errors quote.
const consoleTailLines = 20

// maxHostname is the longest hostname Linux takes.
const maxHostname = 64

// rollbackTimeout bounds the undo of a failed start or create.
const rollbackTimeout = 30 * time.Second

// vmExitGrace is how long an agent error waits to learn whether the VM died.
const vmExitGrace = 2 * time.Second

// DefaultKillTimeout is Config.KillTimeout when it is zero.
const DefaultKillTimeout = 5 * time.Second

// State is where a sandbox is in its life.
type State string

// The states, in order. Transitions only go forward.
const (
	StateNew      State = "new"
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateStopping State = "stopping"
	StateStopped  State = "stopped"
)

var transitions = map[State][]State{
	StateNew:      {StateStarting},
	StateStarting: {StateRunning, StateStopped},
	StateRunning:  {StateStopping},
	StateStopping: {StateStopped},
}

// Config describes a sandbox to start.
type Config struct {
	// ID names the sandbox; it becomes the state directory's name.
	ID string
	// StateRoot is the parent of the sandbox's state directory.
	StateRoot string
	// VM is the hypervisor configuration; ID, StateDir and Agent are filled
	// in by Start.
	VM hypervisor.Config
	// NewVM builds the VM with the configured driver.
	NewVM func(hypervisor.Config) (hypervisor.VM, error)
	// Transport is the agent transport (vsock or serial); VsockPort its port.
	Transport hypervisor.Transport
	VsockPort uint32
	// VsockFallback lets a VM whose vsock device fails at start
	// (hypervisor.ErrVsockUnavailable) start again with the serial
	// transport, with a warning. Set when vsock was chosen automatically.
	VsockFallback bool
	// BootGate bounds how many VMs boot at once on the node: the start
	// takes one of its slots before anything else and holds it until the
	// sandbox runs (or its start failed). Nil boots at once.
	BootGate *bootslot.Gate
	// DialTimeout bounds VM start to the agent's first answer (it counts
	// from the moment the boot slot was taken); CallTimeout each agent
	// call without its own deadline.
	DialTimeout time.Duration
	// DialTimeoutMaxScale, above 1, stretches DialTimeout by the host's
	// load per CPU up to this factor (scaledDialTimeout).
	DialTimeoutMaxScale float64
	CallTimeout         time.Duration
	// KillTimeout is how long the guest has to report the exit of a
	// process told to SIGKILL, or to remove a container, before the host
	// acts on its own; zero means DefaultKillTimeout.
	KillTimeout time.Duration
	// AgentLogLevel is handed to the agent on the kernel command line.
	AgentLogLevel string
	// Hostname of the VM; the sandbox ID when empty.
	Hostname string
	// Virtiofs configures the daemon that shares the containers' files.
	Virtiofs VirtiofsConfig
	// SharedFS is how the containers' files reach the guest:
	// SharedFSVirtioFS (the default, also for "") or SharedFSNone, a VM
	// without a shared file system whose container roots must be disks
	// and whose bind sources are copied (see storage.CopyContainer).
	SharedFS string
	// CopyLimits bound the copies of a container's bind sources with
	// SharedFSNone; zero fields take storage.DefaultCopyLimits'.
	CopyLimits storage.CopyLimits
	// KubeletRootDir is the kubelet's root directory, below whose pods
	// directory a SharedFSNone sandbox recognises its pod's emptyDir
	// volumes: a clean absolute path, "" for
	// storage.DefaultKubeletRootDir.
	KubeletRootDir string
	// NetNS is the path of a network namespace (a pod's, set up by CNI) to
	// mirror into the VM; empty for a VM without network devices.
	NetNS string
	// HotplugNetwork boots the VM without the pod network and mirrors NetNS
	// into it once the agent answers, hot-adding a NIC per interface into
	// the VM.HotplugNICs slots reserved at boot: the path of a VM that
	// booted before its pod's network was known. It needs a driver and
	// machine that can hot-add NICs.
	HotplugNetwork bool
	// NetNSOwn says that NetNS is the runtime process's own network
	// namespace, made for this sandbox alone (hull-runtime's supervisor
	// is created in the namespace of its container): it is mirrored
	// although it is the runtime's own. The host's is always refused.
	NetNSOwn bool
	// DNS is written to the guest's resolv.conf with the pod network.
	DNS *agent.DNS
	// ShmSize is the size in bytes of the pod's /dev/shm in the guest
	// (GuestShmDir); zero for 64 MiB.
	ShmSize uint64
	// DebugConsole lets the agent start its debug shell and the sandbox
	// serve it on ConsoleSocketName (`hull exec`).
	DebugConsole bool
	// Cgroup is where the VMM and virtiofsd are accounted and limited.
	Cgroup CgroupConfig
	// AgentLogMax, when positive, keeps a copy of the agent's relayed log
	// in AgentLogName in the state directory, bounded at that many bytes
	// per file (child.LogFile), for `hull logs`.
	AgentLogMax int64
	// ObserveAgentRPC, when set, is told of every agent call
	// (agentclient.Options.ObserveRPC).
	ObserveAgentRPC func(method string, took time.Duration, err error)
	// Template, when not nil, starts the VM from a saved template of the
	// same VM configuration when there is one (see template.go).
	Template *TemplateConfig
	// Tracing, when not nil, records the start's steps and the agent
	// calls as spans, turns the agent's spans on and exports them as they
	// come (guest spans are checked: tracing.Guest). Nil: no tracing.
	Tracing *tracing.Exporter
	// WarmUp, for StartWarm only (Start ignores it), runs one throwaway
	// container in the booted guest as the warm start's last step ("warm
	// up"), so that a pod's first container finds the guest's container
	// path already run (warmUp). It needs WarmUpBinary. A VM without the
	// shared file system (SharedFSNone) skips it (warmsUp).
	WarmUp bool
	// WarmUpBinary is the absolute path of the static executable the
	// warm-up container runs with -h (exiting 0): a binary the host
	// trusts, the hull-agent binary, copied into a root filesystem the
	// host makes.
	WarmUpBinary string
}

// Phase is one named step of a sandbox's start and how long it took.
type Phase struct {
	Name string
	Took time.Duration
}

// Sandbox is a running VM with its agent.
type Sandbox struct {
	id       string
	stateDir string

	mu sync.Mutex
	// state is guarded by mu.
	state State

	vm     hypervisor.VM
	client *agentclient.Client
	// storage is the shared tree; virtiofsd serves it to the guest.
	storage  *storage.Shared
	virtiofs *virtiofs.Daemon
	// netMu serializes AttachOwnNetwork with Stop's release of the
	// network, so that a network attached while the sandbox stops is
	// either released by Stop or undone by AttachOwnNetwork.
	netMu sync.Mutex
	// resizeMu serializes Resize: its raise of the cgroup limits, the
	// driver's hot-add and the limits' settling to the size reached.
	resizeMu sync.Mutex
	// network mirrors the pod's network namespace (netnsPath) into the
	// VM; nil without one. Both are guarded by mu, and written with netMu
	// held too.
	network   *netpod.Network
	netnsPath string
	// ownNetNS and hotplugNICs are Config.VM's: the VMM has a network
	// namespace of its own, which AttachOwnNetwork mirrors into that many
	// NIC slots.
	ownNetNS    bool
	hotplugNICs uint32
	// hotplugBlocks is Config.VM's: how many disks the VM can have
	// hot-added at once.
	hotplugBlocks uint32
	// copyLimits are Config.CopyLimits with their defaults: the bounds of
	// a container's copied bind sources in a VM without the shared file
	// system (storage nil). Read-only after Start.
	copyLimits storage.CopyLimits
	// kubeletPods is the kubelet's pods directory, where a pod's emptyDir
	// volumes are recognised (storage.KubeletPodsDir of
	// Config.KubeletRootDir; Adopt sets the pod's). Read-only after Start
	// or Adopt.
	kubeletPods string
	// cgroup holds the VMM and virtiofsd; nil without Config.Cgroup.
	cgroup *hostCgroup

	// bg is the sandbox's process-lifetime context for its background
	// loops (process waiters, the OOM loop); Stop cancels it. It carries
	// the logger of Start's context and none of its deadline.
	bg       context.Context
	cancelBg context.CancelFunc
	// oom receives the IDs of containers that met an OOM kill; the OOM
	// loop closes it when it ends.
	oom chan string
	// killTimeout is Config.KillTimeout.
	killTimeout time.Duration

	// diskSeq numbers the disks hot-added for block-device root
	// filesystems; guarded by mu.
	diskSeq int
	// containers holds the containers created and not deleted, and
	// reserves IDs being created (nil value); guarded by mu.
	containers map[string]*Container
	// consoles serves debug consoles when the Config enables them;
	// guarded by mu.
	consoles *consoleServer
	// agentLog is the copy of the agent's log, nil without one; closed by
	// Stop after the agent connection.
	agentLog *child.LogFile
	// restored is set when the VM started from a template, by Start
	// before the VM runs; read-only after.
	restored bool
	// template is the template the VM restores from, nil for a boot; and
	// nicsAfterRestore says that the pod network, attached before the VM
	// was made, is hot-added once it runs (a template has no NIC of the
	// pod). Both are set by Start's "find vm template" step, before the
	// VM is made; read-only after.
	template         *hypervisor.Template
	nicsAfterRestore bool
	// reseedWithPod says that a restored guest's RNG is reseeded by the
	// pod steps, together with their other calls to the agent, rather
	// than by the boot steps (a warm start, which has no pod steps yet).
	// Set by Start before its steps run; read-only after.
	reseedWithPod bool
	// phases are the steps of Start with their durations, written by
	// Start only, before the sandbox is returned; for an adopted sandbox
	// the steps of Adopt, written by Adopt before it returns.
	phases []Phase

	// guestSpans exports the guest's spans; nil without tracing. The
	// relay loop runs until stopRelay, and closes relayDone.
	guestSpans *tracing.Guest
	// spanDrops counts the guest spans dropped, and spanWarned is when
	// the last warning about them went out; used by shipSpans alone.
	spanDrops  tracing.GuestResult
	spanWarned time.Time
	stopRelay  context.CancelFunc
	relayDone  chan struct{}

	// observer is told of every agent call (Config.ObserveAgentRPC); nil
	// for none.
	observer atomic.Pointer[func(method string, took time.Duration, err error)]
	// warm is set on a sandbox StartWarm booted until Adopt takes it;
	// guarded by mu.
	warm *warmBoot
	// retiredCgroups are cgroups the sandbox held before an adoption that
	// could not be removed then; Stop removes them.
	retiredCgroups []*hostcgroup.Group
}

// BootPhases returns the steps of the sandbox's start with how long each
// took.
func (s *Sandbox) BootPhases() []Phase { return append([]Phase(nil), s.phases...) }

// FormatPhases writes phases for a log line: each step's name and its
// duration in milliseconds, "name=12.3ms", separated by commas; steps that
// took under 0.1 ms are left out.
func FormatPhases(phases []Phase) string {
	var b strings.Builder
	for _, p := range phases {
		if p.Took < 100*time.Microsecond {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%.1fms", p.Name, float64(p.Took.Microseconds())/1000)
	}
	return b.String()
}

// ID returns the sandbox's ID.
func (s *Sandbox) ID() string { return s.id }

// VM returns the sandbox's VM.
func (s *Sandbox) VM() hypervisor.VM { return s.vm }

// System returns the agent's System client.
func (s *Sandbox) System() agent.SystemService { return s.client.System() }

// Agent returns the sandbox's connection to its agent, for tools that call
// the agent directly (`hull agent call --boot`). Calls made through it
// bypass the sandbox's own record of containers and processes.
func (s *Sandbox) Agent() *agentclient.Client { return s.client }

// State returns the current lifecycle state.
func (s *Sandbox) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

func (s *Sandbox) transition(to State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, allowed := range transitions[s.state] {
		if allowed == to {
			s.state = to
			return nil
		}
	}
	return fmt.Errorf("sandbox %s: cannot go from %s to %s: %w", s.id, s.state, to, errdefs.ErrFailedPrecondition)
}

// cleanups is a stack of undo functions run in reverse order.
type cleanups []func(context.Context) error

func (c *cleanups) push(f func(context.Context) error) { *c = append(*c, f) }

func (c cleanups) run(ctx context.Context) error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i](ctx))
	}
	return errors.Join(errs...)
}

// Start boots a sandbox: state directory, VM, agent connection, clock. On
// error everything it made is undone. A vsock VM whose guest CID is taken
// is started again with another; one whose vsock device fails is started
// again over serial when cfg.VsockFallback allows (startAttempts).
//
// Every start under an absolute state root, successful or not, is counted
// in the node's start counts there (package startcount).
func Start(ctx context.Context, cfg Config) (sb *Sandbox, err error) {
	defer func() { countStart(ctx, cfg.StateRoot, err) }()
	if err := validate(cfg); err != nil {
		return nil, err
	}
	return startAttempts(ctx, cfg, start)
}

// countStart adds a pod's sandbox start with its outcome err to the node's
// start counts under stateRoot, when that is absolute.
func countStart(ctx context.Context, stateRoot string, err error) {
	if !filepath.IsAbs(stateRoot) {
		return
	}
	if cerr := startcount.Add(startcount.Path(stateRoot), startcount.SandboxEvent(err)); cerr != nil {
		log.G(ctx).WithError(cerr).Warn("counting a sandbox start")
	}
}

// start makes one attempt at Start with the agent endpoint ep.
func start(ctx context.Context, cfg Config, ep hypervisor.AgentEndpoint) (*Sandbox, error) {
	return boot(ctx, cfg, ep, false)
}

// step is one named step of a sandbox's start or adoption; each is a phase
// (BootPhases) and a span.
type step struct {
	name string
	run  func(context.Context) error
	// together, when set (name and run unset), are steps run at the
	// same time, each its own phase and span; the run goes on when all
	// are done. The first to fail cancels the others' context, and the
	// run fails with its error once all returned. For steps that share
	// no state but the agent connection.
	together []step
}

// warmsUp reports whether a start runs the warm-up container: a warm
// start with cfg.WarmUp, of a VM with the shared file system. Without it
// (SharedFSNone) there is no root for the warm-up container (a container
// there needs a disk root, which the pod brings): the VM is kept warm
// booted, its agent connected, without the warm-up.
func warmsUp(cfg Config, warm bool) bool { return warm && cfg.WarmUp && sharesFS(cfg) }

// boot makes one attempt at a start: the boot steps, then, unless warm,
// the pod steps. A warm start stops after the boot steps: the sandbox
// belongs to no pod until Adopt runs the pod steps.
func boot(ctx context.Context, cfg Config, ep hypervisor.AgentEndpoint, warm bool) (_ *Sandbox, retErr error) {
	s := &Sandbox{
		id:          cfg.ID,
		stateDir:    StateDir(cfg.StateRoot, cfg.ID),
		state:       StateNew,
		oom:         make(chan string, oomBuffer),
		killTimeout: cfg.KillTimeout,
		containers:  map[string]*Container{},
		ownNetNS:    cfg.VM.OwnNetNS,
		hotplugNICs: cfg.VM.HotplugNICs,

		hotplugBlocks: cfg.VM.HotplugBlocks,
		copyLimits:    copyLimits(cfg),
		kubeletPods:   kubeletPods(cfg),
	}
	if s.killTimeout == 0 {
		s.killTimeout = DefaultKillTimeout
	}
	s.setObserver(cfg.ObserveAgentRPC)
	// The background loops outlive the request: its container and trace
	// do not name their work, and their calls (long waits) join no trace.
	bg := trace.ContextWithSpanContext(context.WithoutCancel(ctx), trace.SpanContext{})
	s.bg, s.cancelBg = context.WithCancel(tracing.WithoutRequestLog(bg))
	tr := tracer(cfg.Tracing)
	spanName := "sandbox start"
	if warm {
		spanName = "sandbox warm start"
	}
	ctx, span := tr.Start(ctx, spanName, trace.WithAttributes(sandboxAttr(cfg.ID)))
	defer func() { endSpan(span, retErr) }()
	if err := s.transition(StateStarting); err != nil {
		return nil, err
	}
	var undo cleanups
	defer func() {
		if retErr != nil {
			// Undo with a fresh context: the caller's may be what failed.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := undo.run(cctx); err != nil {
				log.G(ctx).WithError(err).Warn("rolling back a failed sandbox start")
			}
			s.cancelBg()
			_ = s.transition(StateStopped)
		}
	}()
	// slot is the boot slot the start holds from its first step until it
	// returns: a start waiting for one holds nothing else. Released by the
	// undo stack on failure.
	var slot *bootslot.Slot
	// A pod's start reseeds a restored guest with its pod steps, at the
	// same time as its other calls; a warm VM is reseeded as it boots.
	s.reseedWithPod = !warm
	steps := s.bootSteps(cfg, ep, &slot, &undo)
	if warmsUp(cfg, warm) {
		steps = append(steps, step{name: "warm up", run: func(ctx context.Context) error {
			return s.warmUp(ctx, cfg)
		}})
	}
	if !warm {
		steps = append(steps, s.podSteps(cfg, cfg.HotplugNetwork, &undo)...)
	}
	if err := s.runSteps(ctx, tr, cfg.ID, "starting", steps); err != nil {
		return nil, err
	}
	if err := slot.Release(); err != nil {
		log.G(ctx).WithError(err).WithField("sandbox", cfg.ID).Warn("releasing the boot slot")
	}
	if warm {
		files, err := identify(bootFiles(cfg.VM, s.vm.Describe().Binary))
		if err != nil {
			return nil, err
		}
		s.warm = &warmBoot{cfg: cfg, files: files}
	}
	if err := s.transition(StateRunning); err != nil {
		return nil, err
	}
	go s.oomLoop(s.id)
	return s, nil
}

// runSteps runs steps in order, each in a span of its own, and records
// each as a phase; the first error ends the run, wrapped with what was
// being done (doing) and the step's name.
func (s *Sandbox) runSteps(ctx context.Context, tr trace.Tracer, id, doing string, steps []step) error {
	for _, st := range steps {
		group := st.together
		if group == nil {
			group = []step{st}
		}
		took := make([]time.Duration, len(group))
		errs := make([]error, len(group))
		// The first step of a group to fail cancels the others (the run
		// fails whatever they do) and is the one the run reports: the
		// others may fail only for the cancel.
		gctx, cancel := context.WithCancel(ctx)
		var failMu sync.Mutex
		failed := -1
		run := func(i int) {
			start := time.Now()
			sctx, sspan := tr.Start(gctx, group[i].name, trace.WithAttributes(sandboxAttr(id)))
			errs[i] = group[i].run(sctx)
			endSpan(sspan, errs[i])
			took[i] = time.Since(start)
			if errs[i] != nil {
				failMu.Lock()
				if failed < 0 {
					failed = i
					cancel()
				}
				failMu.Unlock()
			}
		}
		var wg sync.WaitGroup
		for i := range group[1:] {
			wg.Go(func() { run(i + 1) })
		}
		run(0)
		wg.Wait()
		cancel()
		if failed >= 0 {
			return fmt.Errorf("%s sandbox %s: %s: %w", doing, id, group[failed].name, errs[failed])
		}
		for i, g := range group {
			s.phases = append(s.phases, Phase{Name: g.name, Took: took[i]})
			log.G(ctx).WithField("sandbox", id).WithField("took", took[i]).Debugf("sandbox step %q done", g.name)
		}
	}
	return nil
}

// bootSteps are the first steps of a start, those that belong to no pod:
// they boot the VM with its shared storage (empty), virtiofsd and cgroup,
// and connect to its agent. The pod's network is attached here (before
// the VM is made, as devices present at boot) when cfg names one and does
// not ask for it to be hot-added; a warm start names none.
func (s *Sandbox) bootSteps(cfg Config, ep hypervisor.AgentEndpoint, slot **bootslot.Slot, undo *cleanups) []step {
	steps := []step{
		{name: "wait for a boot slot", run: func(ctx context.Context) error {
			if cfg.BootGate == nil {
				return nil
			}
			sl, err := cfg.BootGate.Acquire(ctx)
			if err != nil {
				return err
			}
			*slot = sl
			undo.push(func(context.Context) error { return sl.Release() })
			log.G(ctx).WithFields(log.Fields{"sandbox": cfg.ID, "slot": sl.Index, "slots": cfg.BootGate.Slots, "waited": sl.Waited}).Info("boot slot taken")
			return nil
		}},
		{name: "create state directory", run: func(ctx context.Context) error {
			if err := os.MkdirAll(cfg.StateRoot, 0o711); err != nil { //nolint:gosec // G301: search-only root (as containerd's); each sandbox's directory is 0700
				return err
			}
			if err := checkRoom(cfg.StateRoot); err != nil {
				return err
			}
			if err := os.Mkdir(s.stateDir, 0o700); err != nil {
				if errors.Is(err, os.ErrExist) {
					return fmt.Errorf("sandbox %s exists: %w", cfg.ID, errdefs.ErrAlreadyExists)
				}
				return err
			}
			dir := s.stateDir
			undo.push(func(context.Context) error { return removeTreeIfUnmounted(dir) })
			return nil
		}},
		{name: "create shared storage", run: func(ctx context.Context) error {
			if !sharesFS(cfg) {
				return nil
			}
			return s.createStorage(ctx, undo)
		}},
		// The record is rewritten as soon as each part it names exists, so
		// that a runtime killed during the start leaves the record of
		// what to release (shim delete, hull cleanup).
		{name: "create cgroup", run: func(ctx context.Context) error {
			if err := s.createCgroup(ctx, cfg.Cgroup, cfg.VM.VCPUs, cfg.VM.MemoryMiB, undo); err != nil {
				return err
			}
			return writeRecord(s.stateDir, s.record())
		}},
		{name: "start virtiofsd", run: func(ctx context.Context) error {
			if !sharesFS(cfg) {
				return nil
			}
			if err := s.startVirtiofs(ctx, cfg.Virtiofs, undo); err != nil {
				return err
			}
			return writeRecord(s.stateDir, s.record())
		}},
		{name: "attach pod network", run: func(ctx context.Context) error {
			if cfg.NetNS == "" || cfg.HotplugNetwork {
				return nil
			}
			if err := s.attachNetwork(ctx, cfg.NetNS, cfg.NetNSOwn, true, undo); err != nil {
				return err
			}
			return writeRecord(s.stateDir, s.record())
		}},
		{name: "find vm template", run: func(ctx context.Context) error {
			return s.findTemplate(ctx, cfg, ep)
		}},
		{name: "create vm", run: func(ctx context.Context) error {
			vc := s.vmConfig(cfg, ep)
			if s.template != nil {
				vc.Template = s.template
				s.restored = true
			}
			vm, err := cfg.NewVM(vc)
			if err != nil {
				return err
			}
			s.vm = vm
			return nil
		}},
		{name: "start vm", run: func(ctx context.Context) error {
			if err := s.startVM(ctx, cfg, ep, undo); err != nil {
				return err
			}
			return writeRecord(s.stateDir, s.record())
		}},
		{name: "connect to agent", run: func(ctx context.Context) error {
			timeout := scaledDialTimeout(cfg.DialTimeout, cfg.DialTimeoutMaxScale, hostLoadPerCPU())
			if timeout != cfg.DialTimeout {
				log.G(ctx).WithFields(log.Fields{"sandbox": cfg.ID, "dial_timeout": timeout}).Info("host under load: dial timeout stretched")
			}
			o := agentclient.Options{
				DialTimeout: timeout,
				CallTimeout: cfg.CallTimeout,
				Abort:       s.vm.Done(),
				ObserveRPC:  s.observeRPC,
				Log:         s.agentLogEntry(cfg.ID),
			}
			if cfg.Tracing != nil {
				o.TracerProvider = cfg.Tracing.TracerProvider()
			}
			if cfg.AgentLogMax > 0 {
				lf, err := child.OpenLog(filepath.Join(s.stateDir, AgentLogName), cfg.AgentLogMax)
				if err != nil {
					return fmt.Errorf("agent log: %w", err)
				}
				undo.push(func(context.Context) error { return lf.Close() })
				s.agentLog = lf
				o.Log = s.agentLogEntry(cfg.ID)
			}
			c, err := agentclient.Dial(ctx, s.vm.Agent(), o)
			if err != nil {
				return s.withConsole(err)
			}
			s.client = c
			undo.push(func(context.Context) error { return c.Close() })
			if cfg.Tracing != nil {
				s.startRelay(cfg.Tracing)
				undo.push(func(context.Context) error { s.endRelay(); return nil })
			}
			return nil
		}},
	}
	if !s.reseedWithPod {
		steps = append(steps, step{name: "reseed guest rng", run: func(ctx context.Context) error {
			if !s.restored {
				return nil
			}
			return reseedGuest(ctx, s.client)
		}})
	}
	return steps
}

// startVM is Start's "start vm" step: it starts s.vm and pushes its stop
// onto undo. When a VM restored from its template fails to start before
// it used its companions (hypervisor.ErrRestoreFailed: the virtio-fs
// daemon, which serves one connection, untouched), a VM of the same
// configuration without the template boots instead; a pod network waiting
// for the restore is hot-added into the slots it reserves all the same.
// A restore that failed later fails the start.
func (s *Sandbox) startVM(ctx context.Context, cfg Config, ep hypervisor.AgentEndpoint, undo *cleanups) error {
	if err := s.vm.Start(ctx); err != nil {
		if !s.restored || ctx.Err() != nil || !errors.Is(err, hypervisor.ErrRestoreFailed) {
			return err
		}
		// The failed Start has undone what it made (its QEMU reaped,
		// its copy of the template memory removed).
		log.G(ctx).WithError(err).WithFields(log.Fields{"sandbox": cfg.ID, "template": filepath.Base(s.template.Dir)}).
			Warn("restoring the vm from its template failed: booting (hull factory template rm removes a damaged template)")
		s.restored, s.template = false, nil
		vm, nerr := cfg.NewVM(s.vmConfig(cfg, ep))
		if nerr != nil {
			return errors.Join(err, nerr)
		}
		s.vm = vm
		if err := s.vm.Start(ctx); err != nil {
			return err
		}
	}
	undo.push(s.vm.Stop)
	if s.restored {
		log.G(ctx).WithFields(log.Fields{"sandbox": cfg.ID, "template": filepath.Base(s.template.Dir), "nics_after": s.nicsAfterRestore}).
			Info("vm restored from its template")
	}
	return nil
}

// podSteps are the steps that make a booted VM the pod's: the guest's
// clock, its sandbox (hostname, share, /dev/shm), the pod network and the
// debug consoles. hotplugNet hot-adds the pod network into the VM's
// reserved NIC slots rather than expecting it attached at boot.
func (s *Sandbox) podSteps(cfg Config, hotplugNet bool, undo *cleanups) []step {
	hostname := cfg.Hostname
	if hostname == "" {
		hostname = cfg.ID[:min(len(cfg.ID), maxHostname)]
	}
	hotadd := step{name: "hot-add pod network", run: func(ctx context.Context) error {
		if s.nicsAfterRestore {
			// Attached before the VM was made, hot-added now.
			return s.addNICs(ctx, cfg.VM.HotplugNICs)
		}
		if cfg.NetNS == "" || !hotplugNet {
			return nil
		}
		return s.hotplugNetwork(ctx, cfg.NetNS, cfg.VM.HotplugNICs, true, undo)
	}}
	// First the hot-add (QMP; the guest then takes the NICs in, its PCI
	// hotplug and the driver's probe) and, for a restored guest, its
	// reseed (the agent) at the same time: the guest has its fresh
	// entropy before it configures the pod network or runs anything of
	// the pod. (A guest with a vmgenid driver reseeds itself at resume.)
	first := []step{hotadd}
	if s.reseedWithPod {
		first = append(first, step{name: "reseed guest rng", run: func(ctx context.Context) error {
			if !s.restored {
				return nil
			}
			return reseedGuest(ctx, s.client)
		}})
	}
	// Then independent calls to the agent, made at the same time: one
	// round trip, and the guest's waits (for the storage modules, for
	// the NICs to show up) overlap.
	together := []step{
		{name: "set guest time", run: func(ctx context.Context) error {
			_, err := s.client.System().SetTime(ctx, &agent.SetTimeRequest{Time: timestamppb.Now()})
			return err
		}},
		{name: "create guest sandbox", run: func(ctx context.Context) error {
			// The agent waits for the storage modules it loads after it
			// began serving; the rest keep loading meanwhile.
			return s.createGuestSandbox(ctx, hostname, cfg.ShmSize)
		}},
		{name: "configure guest network", run: func(ctx context.Context) error {
			return s.configureGuestNetwork(ctx, cfg.DNS)
		}},
	}
	return []step{
		{together: first},
		{together: together},
		{name: "serve debug consoles", run: func(ctx context.Context) error {
			if !cfg.DebugConsole {
				return nil
			}
			return s.listenConsoles(undo)
		}},
	}
}

// vmConfig is the VM's configuration for a sandbox of cfg whose agent is at
// ep: cfg.VM with the sandbox's share, network devices attached at boot
// (not those a restored VM hot-adds),
// identity, state directory, cgroup and the agent's kernel parameters.
func (s *Sandbox) vmConfig(cfg Config, ep hypervisor.AgentEndpoint) hypervisor.Config {
	vc := guestVMConfig(cfg, ep)
	if n := s.podNetwork(); n != nil && !s.nicsAfterRestore {
		vc.Networks = append(append([]hypervisor.NetworkDevice(nil), vc.Networks...), n.Devices()...)
	}
	if s.virtiofs != nil {
		vc.Filesystems = append(append([]hypervisor.FilesystemDevice(nil), vc.Filesystems...), s.filesystemDevice())
		// vhost-user: virtiofsd maps the guest RAM.
		vc.SharedMemory = true
	}
	vc.ID = cfg.ID
	vc.StateDir = s.stateDir
	vc.Cgroup = s.CgroupPath()
	return vc
}

// agentLogEntry is where the agent's log lines go for the sandbox id: the
// sandbox's log (not a request's), and its agent.log when it keeps one.
func (s *Sandbox) agentLogEntry(id string) *log.Entry {
	e := log.G(s.bg).WithField(tracing.LogSandbox, id)
	if s.agentLog != nil {
		e = teeLog(e, s.agentLog)
	}
	return e
}

// setObserver makes f the observer of the sandbox's agent calls (nil:
// none); the agent connection calls it through observeRPC, so that an
// adopted sandbox's calls are counted by its pod.
func (s *Sandbox) setObserver(f func(method string, took time.Duration, err error)) {
	if f == nil {
		s.observer.Store(nil)
		return
	}
	s.observer.Store(&f)
}

func (s *Sandbox) observeRPC(method string, took time.Duration, err error) {
	if f := s.observer.Load(); f != nil {
		(*f)(method, took, err)
	}
}

// withConsole adds the VM's fate and the console tail to an error met while
// talking to the guest.
func (s *Sandbox) withConsole(err error) error {
	var b strings.Builder
	// A guest that dies breaks the connection a moment before the
	// hypervisor process is reaped: give the VM a moment to be seen gone.
	select {
	case <-s.vm.Done():
	case <-time.After(vmExitGrace):
	}
	select {
	case <-s.vm.Done():
		exit, _ := s.vm.Wait(context.Background())
		fmt.Fprintf(&b, "vm exited (%s)", exit)
		if cause := s.cgroupOOMCause(); cause != "" {
			b.WriteString("; " + cause)
		}
		err = fmt.Errorf("%w: %w", err, hypervisor.ErrVMExited)
	default:
	}
	tail := s.vm.ConsoleTail(consoleTailLines)
	if len(tail) > 0 {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString("last console lines:\n    ")
		b.WriteString(strings.Join(tail, "\n    "))
	} else {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString("the guest console is empty")
	}
	return fmt.Errorf("%w; %s", err, b.String())
}

// Stop releases the sandbox: the guest's containers (DestroySandbox, best
// effort), the guest (Shutdown through the agent, when DestroySandbox
// failed; after it succeeded the VM is ended without the guest's
// power-off), the VM, virtiofsd, the
// shared storage, the cgroup (when the sandbox made it) and the state
// directory. It always releases the host resources, even when the agent
// does not answer.
func (s *Sandbox) Stop(ctx context.Context) error {
	if err := s.transition(StateStopping); err != nil {
		return err
	}
	var errs []error
	// No new consoles; the open ones end as the guest shuts down.
	s.closeConsoles()
	if s.client != nil {
		// destroyed: the guest removed every container and unmounted
		// their storages and the sandbox's, then synced (which writes
		// back what the guest cached, a storage detached while busy
		// included), so nothing in the guest is worth its orderly
		// shutdown.
		destroyed := false
		if s.vmAlive() {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := s.client.Containers().DestroySandbox(dctx, &agent.DestroySandboxRequest{}); err != nil {
				log.G(ctx).WithError(err).WithField("sandbox", s.id).Warn("destroying the guest sandbox failed; stopping the vm anyway")
			} else {
				destroyed = true
			}
			cancel()
		}
		// The guest's last spans (DestroySandbox's among them) go out
		// before it shuts down.
		s.endRelay()
		if s.guestSpans != nil && s.vmAlive() {
			// The last batch gets a short bound of its own: a slow
			// collector must not hold up the stop.
			sctx, cancel := context.WithTimeout(ctx, finalSpanTimeout)
			s.shipSpans(sctx, s.guestSpans)
			cancel()
		}
		// After a destroyed guest sandbox the driver ends the VM at
		// once (QEMU's quit completes its pending disk writes): the
		// guest's power-off (its own sync and unmounts, then the
		// kernel's device shutdown) is slow under TCG and saves
		// nothing. Otherwise the guest gets its orderly shutdown, to
		// write back what it may still hold.
		if s.vmAlive() && !destroyed {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := s.client.System().Shutdown(sctx, &agent.ShutdownRequest{})
			cancel()
			if err == nil {
				// The agent powers the VM off after replying; give it a
				// moment before the driver steps in.
				select {
				case <-s.vm.Done():
				case <-time.After(5 * time.Second):
				case <-ctx.Done():
				}
			} else {
				log.G(ctx).WithError(err).Warn("agent shutdown failed; stopping the vm")
			}
		}
		errs = append(errs, s.client.Close())
	}
	if s.agentLog != nil {
		errs = append(errs, s.agentLog.Close())
	}
	// The background loops end with the connection; cancel them before
	// the processes' streams are closed.
	s.cancelBg()
	errs = append(errs, s.vm.Stop(ctx))
	s.closeContainers()
	if s.virtiofs != nil {
		errs = append(errs, s.virtiofs.Stop(ctx))
	}
	s.netMu.Lock()
	if n := s.podNetwork(); n != nil {
		errs = append(errs, n.Close(ctx))
	}
	s.netMu.Unlock()
	var storageErr error
	if s.storage != nil {
		storageErr = s.storage.Close(ctx)
		errs = append(errs, storageErr)
	}
	var cgroupErr error
	if s.cgroup != nil {
		cgroupErr = s.cgroup.g.Delete()
		errs = append(errs, cgroupErr)
	}
	// The state directory holds the record Cleanup works from: it goes
	// last, and stays while anything it names is still there, so that a
	// runtime killed during this stop, or a later cleanup, finds the
	// record of what is left.
	switch {
	case storageErr != nil:
		// Its mounts may still be there: a recursive removal would
		// delete what they show.
		log.G(ctx).WithField("dir", s.stateDir).Warn("keeping the state directory: its storage was not released")
	case cgroupErr != nil:
		log.G(ctx).WithField("dir", s.stateDir).Warn("keeping the state directory: the sandbox's cgroup was not removed")
	default:
		errs = append(errs, removeTreeIfUnmounted(s.stateDir))
	}
	for _, g := range s.retiredCgroups {
		errs = append(errs, g.Delete())
	}
	if err := s.transition(StateStopped); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping sandbox %s: %w", s.id, err)
	}
	return nil
}

// vmAlive reports whether the hypervisor process still runs.
func (s *Sandbox) vmAlive() bool {
	select {
	case <-s.vm.Done():
		return false
	default:
		return true
	}
}

func validate(cfg Config) error {
	errs := locationErrors(cfg.ID, cfg.StateRoot)
	if cfg.NewVM == nil {
		errs = append(errs, errors.New("no vm constructor"))
	}
	switch cfg.Transport {
	case hypervisor.TransportSerial, hypervisor.TransportVsock:
	default:
		errs = append(errs, fmt.Errorf("unknown agent transport %q", cfg.Transport))
	}
	if cfg.HotplugNetwork && cfg.NetNS != "" && cfg.VM.HotplugNICs == 0 {
		errs = append(errs, errors.New("a network hot-added after boot needs NIC hotplug slots (VM.HotplugNICs)"))
	}
	if cfg.DialTimeout <= 0 || cfg.CallTimeout <= 0 || cfg.KillTimeout < 0 {
		errs = append(errs, errors.New("agent timeouts must be positive"))
	}
	switch cfg.SharedFS {
	case "", SharedFSVirtioFS, SharedFSNone:
	default:
		errs = append(errs, fmt.Errorf("shared file system %q: want %q or %q", cfg.SharedFS, SharedFSVirtioFS, SharedFSNone))
	}
	if l := cfg.CopyLimits; l.Total < 0 || l.File < 0 || l.Entries < 0 {
		errs = append(errs, errors.New("copy limits must not be negative"))
	}
	if r := cfg.KubeletRootDir; r != "" && (!filepath.IsAbs(r) || filepath.Clean(r) != r || r == "/") {
		errs = append(errs, fmt.Errorf("kubelet root directory %q: want a clean absolute path other than /", r))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sandbox config: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// maxIDLen bounds a sandbox ID: a containerd ID (at most 76 bytes) qualified
// by its namespace (as long again, and a separator).
const maxIDLen = 160

// locationErrors checks a sandbox ID and state root.
func locationErrors(id, stateRoot string) []error {
	var errs []error
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." || IsNodeState(id) || len(id) > maxIDLen {
		errs = append(errs, fmt.Errorf("bad sandbox id %q", id))
	}
	if !filepath.IsAbs(stateRoot) {
		errs = append(errs, fmt.Errorf("state root %q is not absolute", stateRoot))
	}
	return errs
}

// AgentLogName is the copy of the agent's log in a sandbox's state
// directory (AgentLogName+".1" its previous part).
const AgentLogName = "agent.log"

// teeLog is e writing to w as well: the relayed agent log goes to the
// runtime's log and to the sandbox's bounded agent.log.
func teeLog(e *log.Entry, w io.Writer) *log.Entry {
	l := logrus.New()
	l.SetLevel(e.Logger.GetLevel())
	l.SetFormatter(e.Logger.Formatter)
	l.SetOutput(io.MultiWriter(e.Logger.Out, w))
	return logrus.NewEntry(l).WithFields(e.Data)
}
