package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/kvm"
)

var (
	_ hypervisor.VM      = (*VM)(nil)
	_ hypervisor.Pauser  = (*VM)(nil)
	_ hypervisor.Resizer = (*VM)(nil)

	_ hypervisor.NetworkAdder    = (*VM)(nil)
	_ hypervisor.Relocator       = (*VM)(nil)
	_ hypervisor.BlockHotplugger = (*VM)(nil)
	_ hypervisor.Snapshotter     = (*VM)(nil)
)

// state is where a VM is in its life:
//
//	created -> starting -> running <-> paused
//	starting -> stopped            (Start failed; everything released)
//	running|paused -> exited       (the QEMU process ended)
//	any -> stopped                 (Stop released everything)
type state int

const (
	stateCreated state = iota
	stateStarting
	stateRunning
	statePaused
	stateExited
	stateStopped
)

func (s state) String() string {
	return [...]string{"created", "starting", "running", "paused", "exited", "stopped"}[s]
}

// VM is one QEMU virtual machine.
type VM struct {
	// Set by New, read-only after, but for cfg.StateDir, cfg.Agent and
	// cfg.Filesystems' socket paths, which MoveStateDir changes under mu.
	cfg      hypervisor.Config
	opts     Options
	layout   layout
	warnings []string
	done     chan struct{}

	// stopMu serializes Start and Stop.
	stopMu sync.Mutex

	// resizeMu serializes Resize.
	resizeMu sync.Mutex
	// dimmSeq numbers the hot-added DIMMs; guarded by resizeMu.
	dimmSeq int

	// nicMu serializes AddNetwork and AddNetworks.
	nicMu sync.Mutex
	// nicPorts are the root ports reserved for hot-added NICs; guarded
	// by nicMu.
	nicPorts hotPorts
	// fdSeq numbers the descriptors passed over QMP; guarded by nicMu.
	fdSeq int

	// blkMu serializes AddBlock and RemoveBlock.
	blkMu sync.Mutex
	// blkPorts are the root ports reserved for hot-added disks; guarded
	// by blkMu.
	blkPorts hotPorts
	// fdsetSeq numbers the fd sets AddBlock makes; guarded by blkMu.
	fdsetSeq int64
	// unplugWait bounds the wait for the guest to release a device; set
	// by New.
	unplugWait time.Duration

	mu sync.Mutex
	// deleted are the waits for DEVICE_DELETED, by device ID; guarded
	// by mu.
	deleted map[string]chan struct{}
	// unplugging are the devices whose unplug stopped waiting for the
	// guest: their DEVICE_DELETED, when it comes, frees their port;
	// guarded by mu. Each unplug gets a mark of its own, so that a
	// release started for one device does not free the port of a later
	// device of the same ID.
	unplugging map[string]*lateUnplug
	// late counts the running releaseLate goroutines.
	late sync.WaitGroup
	// state of the VM; guarded by mu.
	state state
	// pid and proc of the QEMU process, unset before it started; guarded
	// by mu.
	pid  int
	proc *os.Process
	// started is the QEMU process's identity for the sandbox record;
	// guarded by mu.
	started child.Process
	// binary is the resolved QEMU path once Start ran; guarded by mu.
	binary string
	// qmp is the monitor connection while QEMU runs; guarded by mu.
	qmp *qmpConn
	// cgroup holds the QEMU process; guarded by mu.
	cgroup *vmCgroup
	// consoleLog is the bounded console log once Start opened it, and
	// console its reader while QEMU runs; guarded by mu.
	consoleLog *child.LogFile
	console    *console
	// stopRequested tells the waiter that an exit was asked for; guarded
	// by mu.
	stopRequested bool
	// shutdownReason is the reason of QMP's SHUTDOWN event; guarded by mu.
	shutdownReason string
	// uid is the user ID QEMU runs as, with Options.RunAsUIDBase, until it
	// has been reaped; guarded by mu.
	uid *uidLease
	// exit is how QEMU ended, valid once done is closed; guarded by mu.
	exit hypervisor.Exit
	// agentPortOpens counts the guest's opens of the agent's serial port
	// and agentPortOpen is its last state, from QMP events, in template
	// VMs (see Snapshot); guarded by mu.
	agentPortOpens int
	agentPortOpen  bool
}

// layout is the part of a VM's layout that o gives without looking at
// the host, the defaults filled in; New resolves AccelAuto, the CPU model
// and the TSC frequency.
func (o Options) layout() layout {
	l := layout{binary: o.Binary, machine: o.Machine, accel: o.Accel, cpuModel: o.CPUModel, tscKHz: o.TSCKHz,
		freePageReporting: o.FreePageReporting, tcgCacheMiB: o.TCGCacheMiB, firmware: o.Firmware}
	if l.tcgCacheMiB == 0 {
		l.tcgCacheMiB = DefaultTCGCacheMiB
	}
	if l.binary == "" {
		l.binary = DefaultBinary
	}
	if l.machine == "" {
		l.machine = MachineQ35
	}
	if l.firmware == "" {
		l.firmware = FirmwareQboot
	}
	return l
}

// New checks cfg and o and returns a VM ready to Start. With AccelAuto it
// runs the cached KVM probe (at most a couple of seconds, once per boot
// when its verdict is conclusive); a fallback to TCG is one of the
// warnings that Describe reports and Start logs.
func New(cfg hypervisor.Config, o Options) (*VM, error) {
	cfg.KernelParams = append([]string(nil), cfg.KernelParams...)
	if cfg.Template != nil {
		t := *cfg.Template
		cfg.Template = &t
	}
	if err := validate(&cfg, &o); err != nil {
		return nil, err
	}
	v := &VM{cfg: cfg, opts: o, done: make(chan struct{}),
		deleted: map[string]chan struct{}{}, unplugging: map[string]*lateUnplug{}, unplugWait: defaultUnplugWait}
	if o.Machine == MachineQ35 {
		v.nicPorts = newHotPorts("NIC", nicPortID, cfg.HotplugNICs)
		v.blkPorts = newHotPorts("disk", blockPortID, cfg.HotplugBlocks)
	}
	v.layout = o.layout()
	if o.Accel == AccelAuto {
		probe := o.ProbeKVM
		if probe == nil {
			probe = func(ctx context.Context) kvm.Result { return kvm.ProbeCached(ctx, probeTimeout, "") }
		}
		r := probe(context.Background())
		if r.Usable {
			v.layout.accel = AccelKVM
		} else {
			v.layout.accel = AccelTCG
			v.warnings = append(v.warnings, fmt.Sprintf("KVM unusable: %s; falling back to TCG: the guest runs under software emulation, many times slower", r.Reason))
		}
	}
	if v.layout.cpuModel == "" {
		v.layout.cpuModel = defaultCPUModel(v.layout.accel)
	}
	if v.layout.accel == AccelTCG && v.layout.tscKHz == 0 {
		v.layout.tscKHz = hostTSCKHz()
		if v.layout.tscKHz == 0 {
			v.warnings = append(v.warnings, "host TSC frequency unknown; the guest calibrates its clock (slower boot)")
		}
	}
	return v, nil
}

// Args returns QEMU's full argv, program first, as Start runs it on a host
// where /dev/vhost-net does not open; where it opens, Start adds vhost=on
// and the vhost-net descriptors to each NIC (see vhostnet.go).
func (v *VM) Args() ([]string, error) {
	v.mu.Lock()
	cfg := v.cfg
	v.mu.Unlock()
	return buildArgs(&cfg, v.layout), nil
}

// Agent tells how to reach the agent: the config's endpoint with the
// driver's defaults filled in.
func (v *VM) Agent() hypervisor.AgentEndpoint {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.cfg.Agent
}

// Done is closed when the QEMU process has exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Wait blocks until QEMU has exited or ctx is done. Wait on a VM whose
// process was never started returns an error of class
// ErrFailedPrecondition.
func (v *VM) Wait(ctx context.Context) (hypervisor.Exit, error) {
	if v.pidOf() == 0 {
		return hypervisor.Exit{}, fmt.Errorf("vm %s not started: %w", v.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	select {
	case <-v.done:
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.exit, nil
	case <-ctx.Done():
		return hypervisor.Exit{}, ctx.Err()
	}
}

func (v *VM) pidOf() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.pid
}

// Describe reports what runs.
func (v *VM) Describe() hypervisor.Description {
	v.mu.Lock()
	pid, bin, st := v.pid, v.binary, v.state
	startTime := v.started.StartTime
	var cg string
	if v.cgroup != nil {
		cg = v.cgroup.path
	}
	v.mu.Unlock()
	if bin == "" {
		bin, _ = lookBinary(v.opts.Binary)
	}
	if st == stateExited || st == stateStopped {
		pid, startTime = 0, 0
	}
	if cg == "" {
		cg = v.cgroupPath()
	}
	d := hypervisor.Description{
		Driver:     "qemu",
		Binary:     bin,
		PID:        pid,
		StartTime:  startTime,
		Accel:      v.layout.accel,
		Machine:    v.layout.machine,
		ConsoleLog: v.consolePath(),
		StateDir:   v.dir(),
		Cgroup:     cg,
		Warnings:   append([]string(nil), v.warnings...),

		CPUModel:          v.layout.cpuModel,
		FreePageReporting: v.layout.freePageReporting,
	}
	if v.layout.machine == MachineQ35 {
		d.Firmware = v.layout.firmware
	}
	if o := v.opts; o.RunAsUIDBase != 0 {
		d.RunAsUIDs = fmt.Sprintf("%d-%d", o.RunAsUIDBase, uint64(o.RunAsUIDBase)+uint64(o.RunAsUIDCount)-1)
	}
	if bin != "" {
		d.Version = qemuVersion(bin)
	}
	return d
}

// dir is the VM's state directory now (see MoveStateDir).
func (v *VM) dir() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.cfg.StateDir
}

func (v *VM) consolePath() string { return filepath.Join(v.dir(), consoleLogName) }
func (v *VM) consoleSocketPath() string {
	return filepath.Join(v.dir(), consoleSocketName)
}
func (v *VM) qmpPath() string    { return filepath.Join(v.dir(), qmpSocketName) }
func (v *VM) pidPath() string    { return filepath.Join(v.dir(), pidFileName) }
func (v *VM) cgroupPath() string { return filepath.Join("/", v.opts.CgroupParent, v.cfg.ID) }

// Pause stops the vCPUs.
func (v *VM) Pause(ctx context.Context) error {
	return v.pauseResume(ctx, "stop", stateRunning, statePaused)
}

// Resume restarts the vCPUs of a paused VM.
func (v *VM) Resume(ctx context.Context) error {
	return v.pauseResume(ctx, "cont", statePaused, stateRunning)
}

func (v *VM) pauseResume(ctx context.Context, cmd string, from, to state) error {
	v.mu.Lock()
	st, q := v.state, v.qmp
	v.mu.Unlock()
	switch {
	case st == stateExited || st == stateStopped:
		return fmt.Errorf("vm %s: %s: %w", v.cfg.ID, cmd, hypervisor.ErrVMExited)
	case st == to:
		return nil
	case st != from:
		return fmt.Errorf("vm %s is %s: %w", v.cfg.ID, st, errdefs.ErrFailedPrecondition)
	}
	if _, err := q.execute(ctx, cmd, nil); err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	v.mu.Lock()
	if v.state == from {
		v.state = to
	}
	v.mu.Unlock()
	return nil
}
