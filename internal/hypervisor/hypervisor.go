package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
)

// ErrVMExited is returned (wrapped) by calls that need a running VM after its
// process has gone.
var ErrVMExited = fmt.Errorf("vm exited: %w", errdefs.ErrUnavailable)

// ErrCIDInUse is returned (wrapped) by Start when the vsock guest context ID
// of the VM's agent endpoint belongs to another VM on the host: the same
// VM may start with another CID.
var ErrCIDInUse = fmt.Errorf("vsock guest cid in use: %w", errdefs.ErrUnavailable)

// ErrVsockUnavailable is returned (wrapped) by Start when the hypervisor
// cannot set up the VM's vsock device (no vhost-vsock driver, no access to
// its device): the VM may start with the serial transport instead.
var ErrVsockUnavailable = fmt.Errorf("vsock device unavailable: %w", errdefs.ErrUnavailable)

// ErrRestoreFailed is returned (wrapped) by Start of a VM restored from a
// template (Config.Template with Restore) when the restore failed before
// the VM used anything outside it that serves one VM only (the virtio-fs
// daemon, which a clone connects to last): a VM of the same configuration
// without the template may boot instead. A restore that failed after is
// not marked, and the caller must not reuse those companions.
var ErrRestoreFailed = errors.New("restoring the vm from its template failed before it used its companions")

// VM is one virtual machine managed by a driver. A VM is started at most once.
type VM interface {
	// Start launches the hypervisor process and returns once the hypervisor
	// runs the guest. It does not wait for the guest to boot. On error nothing
	// is left behind.
	Start(ctx context.Context) error
	// Stop ends the VM: an orderly stop of the hypervisor first, a kill when
	// that does not finish before ctx is done or the driver's own limit. It
	// releases every host resource of the VM (processes, cgroup, sockets) and
	// is safe to call more than once and on a VM that has already exited.
	Stop(ctx context.Context) error
	// Wait blocks until the hypervisor process has exited or ctx is done.
	Wait(ctx context.Context) (Exit, error)
	// Done is closed when the hypervisor process has exited.
	Done() <-chan struct{}
	// Agent tells how the host reaches the agent in this VM.
	Agent() AgentEndpoint
	// Describe reports what runs, for logs and `hull env`.
	Describe() Description
	// ConsoleTail returns up to n last lines of the guest console.
	ConsoleTail(n int) []string
}

// Exit is how a hypervisor process ended.
type Exit struct {
	// Code is the exit status, or -1 when the process was killed by a signal.
	Code int
	// Signal is the signal that killed the process, if one did.
	Signal string
	// At is when the exit was seen.
	At time.Time
	// Requested is true when the exit followed Stop or an agent shutdown.
	Requested bool
}

func (e Exit) String() string {
	if e.Signal != "" {
		return "killed by " + e.Signal
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// Description says what a driver runs, for logs and diagnostics.
type Description struct {
	Driver string `json:"driver"`
	// Binary and Version of the hypervisor program.
	Binary  string `json:"binary"`
	Version string `json:"version,omitempty"`
	PID     int    `json:"pid,omitempty"`
	// StartTime is the hypervisor process's start time (field 22 of
	// /proc/<pid>/stat), recorded when it started: with PID it names the
	// process even after the PID was reused.
	StartTime uint64 `json:"start_time,omitempty"`
	// Accel is the accelerator in use ("kvm" or "tcg").
	Accel string `json:"accel"`
	// Machine is the machine model (for QEMU "q35" or "microvm").
	Machine string `json:"machine"`
	// CPUModel is the CPU the guest sees (QEMU's -cpu).
	CPUModel string `json:"cpu_model,omitempty"`
	// RunAsUIDs is the range of user IDs the hypervisor drops root to
	// once its devices are open ("<first>-<last>"); empty when it keeps
	// root.
	RunAsUIDs string `json:"run_as_uids,omitempty"`
	// FreePageReporting says that the guest has a free page reporting
	// balloon and hands the memory it frees back to the host.
	FreePageReporting bool     `json:"free_page_reporting,omitempty"`
	ConsoleLog        string   `json:"console_log"`
	StateDir          string   `json:"state_dir"`
	Cgroup            string   `json:"cgroup,omitempty"`
	Warnings          []string `json:"warnings,omitempty"`

	// Firmware is the firmware the VM's options ask for (for QEMU's q35
	// "qboot" or "seabios"; a template and its clones run SeaBIOS
	// whatever it says); empty when the machine has only its own.
	Firmware string `json:"firmware,omitempty"`
}

// Capability interfaces. A driver implements the ones it supports; callers
// reach them through the As* helpers.

// Pauser stops and restarts the VM's vCPUs.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Hotplugger adds devices to a running VM.
type Hotplugger interface {
	AddFilesystem(ctx context.Context, fs FilesystemDevice) error
	AddBlock(ctx context.Context, b BlockDevice) error
	AddNetwork(ctx context.Context, n NetworkDevice) error
}

// NetworkAdder hot-adds virtio-net NICs to a running VM, for a network
// known only after the VM booted (a pod's network namespace, set up once the
// VM exists). The guest sees a new PCI device; the agent finds it by its MAC
// address and configures it as it does a NIC present at boot.
type NetworkAdder interface {
	// AddNetwork adds n whole or not at all. n.FDs stay the caller's: the
	// hypervisor holds copies. A VM whose machine cannot hot-add devices
	// answers ErrNotImplemented; one with no free slot left (see
	// Config.HotplugNICs) ErrResourceExhausted; an ID already in use
	// ErrAlreadyExists.
	AddNetwork(ctx context.Context, n NetworkDevice) error
	// AddNetworks adds ns all or none: with fewer free slots than NICs it
	// answers ErrResourceExhausted before it adds any, and when one fails
	// it removes those it added.
	AddNetworks(ctx context.Context, ns []NetworkDevice) error
}

// BlockHotplugger hot-adds and removes virtio-blk disks of a running VM
// (a container's block-device root filesystem). The guest sees a new PCI
// device; the agent finds the disk by its serial.
type BlockHotplugger interface {
	// AddBlock adds b whole or not at all, from b.File (b.Path is not
	// opened). A VM whose machine cannot hot-add devices answers
	// ErrNotImplemented; one with no free slot left (see
	// Config.HotplugBlocks) ErrResourceExhausted; an ID already in use
	// ErrAlreadyExists.
	AddBlock(ctx context.Context, b BlockDevice) error
	// RemoveBlock unplugs the disks added as ids, all at once: the
	// driver asks for every unplug before it waits, once, for the guest.
	// The guest must release each device: for one it does not release
	// within the driver's bound, RemoveBlock logs it and goes on; the
	// disk's slot, and the hypervisor's hold on its file, stay until the
	// guest lets the device go (then the slot is reused) or the VM stops.
	// An unknown id is ErrNotFound; the errors of the disks are joined,
	// and the others are removed all the same.
	RemoveBlock(ctx context.Context, ids ...string) error
}

// Size is how many vCPUs and how much memory a VM has.
type Size struct {
	VCPUs     uint32
	MemoryMiB uint32
}

// Resizer grows a running VM by CPU and memory hotplug, up to the limits of
// its Config (MaxVCPUs, MaxMemoryMiB). The guest sees the new vCPUs and
// memory but has to bring them online itself (the agent's OnlineResources).
type Resizer interface {
	// Resize grows the VM to at least vcpus vCPUs and memoryMiB MiB of
	// memory and returns the size it has then; memory grows in the
	// driver's granularity, so it may exceed memoryMiB. It never shrinks: a
	// smaller value leaves that resource as it is. A size beyond the
	// limits is an ErrInvalidArgument-class error; a machine that cannot
	// hotplug answers ErrNotImplemented. Every device is added whole or
	// not at all; after an error the VM may have grown part of the way,
	// which the next Resize sees.
	Resize(ctx context.Context, vcpus, memoryMiB uint32) (Size, error)
}

// Relocator hands a running VM over to another owner: a VM booted ahead of
// its pod (a VM factory's warm VM) moves into the pod's state directory and
// cgroup when the pod adopts it.
type Relocator interface {
	// MoveStateDir runs rename, which renames the VM's state directory
	// (Config.StateDir) to dir on the same file system, with the VM's own
	// writes there held; when rename succeeds the VM's files (sockets,
	// console log, pid file) are known below dir. The hypervisor process
	// is not told: its sockets are bound and connected already.
	MoveStateDir(dir string, rename func() error) error
	// MoveCgroup moves the hypervisor process, with all its threads, into
	// the existing cgroup at path (below the cgroup root) that the caller
	// made, limits and removes, as Config.Cgroup says; a cgroup of the
	// driver's own that held it is removed.
	MoveCgroup(path string) error
}

// Snapshotter saves a VM booted as a template (Config.Template without
// Restore) into its template directory, from which clones then start.
type Snapshotter interface {
	// Snapshot waits until the guest has let go of the host's agent
	// connection (the caller closes its own first), stops the vCPUs, saves
	// the device state beside the RAM file and ends the VM. A VM that is
	// not a template answers ErrFailedPrecondition. On error the template
	// directory holds no state file, and the VM is stopped.
	Snapshot(ctx context.Context) error
}

// AsPauser returns vm's Pauser or an ErrNotImplemented-class error.
func AsPauser(vm VM) (Pauser, error) { return as[Pauser](vm, "pause") }

// AsHotplugger returns vm's Hotplugger or an ErrNotImplemented-class error.
func AsHotplugger(vm VM) (Hotplugger, error) { return as[Hotplugger](vm, "hotplug") }

// AsNetworkAdder returns vm's NetworkAdder or an ErrNotImplemented-class
// error.
func AsNetworkAdder(vm VM) (NetworkAdder, error) {
	return as[NetworkAdder](vm, "hot-add network devices")
}

// AsBlockHotplugger returns vm's BlockHotplugger or an
// ErrNotImplemented-class error.
func AsBlockHotplugger(vm VM) (BlockHotplugger, error) {
	return as[BlockHotplugger](vm, "hot-add block devices")
}

// AsResizer returns vm's Resizer or an ErrNotImplemented-class error.
func AsResizer(vm VM) (Resizer, error) { return as[Resizer](vm, "resize") }

// AsRelocator returns vm's Relocator or an ErrNotImplemented-class error.
func AsRelocator(vm VM) (Relocator, error) { return as[Relocator](vm, "change hands") }

// AsSnapshotter returns vm's Snapshotter or an ErrNotImplemented-class error.
func AsSnapshotter(vm VM) (Snapshotter, error) { return as[Snapshotter](vm, "snapshot") }

func as[T any](vm VM, what string) (T, error) {
	c, ok := vm.(T)
	if !ok {
		var zero T
		return zero, fmt.Errorf("%s driver cannot %s: %w", vm.Describe().Driver, what, errdefs.ErrNotImplemented)
	}
	return c, nil
}

// IsExited reports whether err says the VM is gone.
func IsExited(err error) bool { return errors.Is(err, ErrVMExited) }
