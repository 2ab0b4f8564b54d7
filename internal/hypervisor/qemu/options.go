package qemu

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/kvm"
)

// Machine models.
const (
	MachineQ35     = "q35"
	MachineMicroVM = "microvm"
)

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Firmware of a q35 VM (Options.Firmware).
const (
	// FirmwareQboot is qboot, a minimal firmware that sets up the
	// machine and jumps to the kernel QEMU loaded (QEMU's qboot.rom; a
	// microvm's firmware is qboot too). Under TCG it boots with less
	// translated code and guest memory than SeaBIOS.
	FirmwareQboot = "qboot"
	// FirmwareSeaBIOS is QEMU's default PC BIOS.
	FirmwareSeaBIOS = "seabios"
)

// qbootFile is qboot's image in QEMU's data directory.
const qbootFile = "qboot.rom"

// DefaultBinary is looked up in PATH when Options.Binary is empty.
const DefaultBinary = "qemu-system-x86_64"

// DefaultAgentPort is the virtio-serial port name used when the config
// leaves Agent.PortName empty.
const DefaultAgentPort = "hull.agent"

// Options are the QEMU driver's own settings.
type Options struct {
	// Binary is the QEMU program; DefaultBinary from PATH when empty.
	Binary string
	// Machine is MachineQ35 (the default; hotplug, nvdimm and virtio-pmem
	// need it) or MachineMicroVM (boots faster, no hotplug).
	Machine string
	// Accel is AccelAuto (the default: KVM when kvm.ProbeCached says it
	// really runs a standard guest, else TCG with a warning), AccelKVM or
	// AccelTCG.
	Accel string
	// CPUModel is QEMU's -cpu; empty for the default of the machine and
	// accelerator (see defaultCPUModel).
	CPUModel string
	// TSCKHz is the host TSC frequency given to TCG guests
	// (tsc_early_khz); 0 detects it from the host.
	TSCKHz uint64
	// CgroupParent is the cgroup under which each VM gets its own, named
	// by the VM ID; "hull" when empty.
	CgroupParent string
	// StopTimeout bounds the orderly stop (QMP quit) before SIGKILL; 5s
	// when zero.
	StopTimeout time.Duration
	// ConsoleMax bounds the console log: console.log holds at most this
	// many bytes before it is rotated to console.log.1 (child.LogFile);
	// child.DefaultLogMax when zero.
	ConsoleMax int64
	// RunAsUIDBase, when not 0, runs each QEMU as a user and group ID of
	// its own from [RunAsUIDBase, RunAsUIDBase+RunAsUIDCount) once its
	// devices are open (see runas.go); 0 keeps QEMU root.
	RunAsUIDBase uint32
	// RunAsUIDCount is the size of that range.
	RunAsUIDCount uint32
	// FreePageReporting adds a virtio-balloon device with free page
	// reporting: the guest kernel hands the host the memory it frees
	// (down to single pages, see freePageReportingOrder), and QEMU
	// releases it, so a guest's host memory shrinks after a peak instead
	// of staying at its high-water mark. The balloon is never inflated.
	FreePageReporting bool
	// TCGCacheMiB is the size of TCG's translated-code cache in MiB
	// (-accel tcg,tb-size=); DefaultTCGCacheMiB when 0. Unused under KVM.
	TCGCacheMiB uint32
	// Firmware is the firmware of a q35 VM: FirmwareQboot (the default
	// when empty) or FirmwareSeaBIOS. Ignored on microvm, whose firmware
	// is QEMU's own (qboot), and by VM templates and their clones, which
	// run SeaBIOS (see buildArgs).
	Firmware string
	// ProbeKVM replaces kvm.ProbeCached when Accel is AccelAuto; for tests.
	ProbeKVM func(ctx context.Context) kvm.Result
}

const (
	defaultCgroupParent = "hull"
	defaultStopTimeout  = 5 * time.Second
	// probeTimeout bounds the KVM probe that AccelAuto runs in New.
	probeTimeout = 2 * time.Second
)

// idPattern is a VM ID: a containerd ID, possibly qualified by its
// namespace after an '@' (as the shim names a pod's VM).
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.@-]{0,159}$`)

// validate checks cfg and o without touching the host and fills in the
// defaults that need no host lookups.
func validate(cfg *hypervisor.Config, o *Options) error {
	inval := func(format string, args ...any) error {
		return fmt.Errorf("qemu: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if !idPattern.MatchString(cfg.ID) {
		return inval("vm id %q: want 1-160 letters, digits, '_', '.', '@' or '-', not starting with a symbol", cfg.ID)
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return inval("state dir %q is not an absolute path", cfg.StateDir)
	}
	if cfg.Kernel == "" {
		return inval("no kernel")
	}
	if cfg.VCPUs < 1 || cfg.VCPUs > 255 {
		return inval("%d vCPUs: want 1 to 255", cfg.VCPUs)
	}
	if cfg.MemoryMiB < 64 {
		return inval("%d MiB of memory: want at least 64", cfg.MemoryMiB)
	}
	if cfg.MaxVCPUs > 255 {
		return inval("at most %d vCPUs: want up to 255", cfg.MaxVCPUs)
	}

	switch o.Machine {
	case "":
		o.Machine = MachineQ35
	case MachineQ35, MachineMicroVM:
	default:
		return inval("machine %q: want %q or %q", o.Machine, MachineQ35, MachineMicroVM)
	}
	switch o.Firmware {
	case "":
		o.Firmware = FirmwareQboot
	case FirmwareQboot, FirmwareSeaBIOS:
	default:
		return inval("firmware %q: want %q or %q", o.Firmware, FirmwareQboot, FirmwareSeaBIOS)
	}
	switch o.Accel {
	case "":
		o.Accel = AccelAuto
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return inval("accelerator %q: want %q, %q or %q", o.Accel, AccelAuto, AccelKVM, AccelTCG)
	}
	if o.CgroupParent == "" {
		o.CgroupParent = defaultCgroupParent
	}
	if filepath.IsAbs(o.CgroupParent) || filepath.Clean(o.CgroupParent) != o.CgroupParent || o.CgroupParent == ".." ||
		len(o.CgroupParent) >= 3 && o.CgroupParent[:3] == "../" {
		return inval("cgroup parent %q: want a clean relative path", o.CgroupParent)
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = defaultStopTimeout
	}
	if o.ConsoleMax < 0 {
		return inval("console log bound %d: want a positive size, or 0 for the default", o.ConsoleMax)
	}
	if o.ConsoleMax == 0 {
		o.ConsoleMax = child.DefaultLogMax
	}
	if o.RunAsUIDBase != 0 {
		if o.RunAsUIDCount == 0 || uint64(o.RunAsUIDBase)+uint64(o.RunAsUIDCount) > 1<<31 {
			return inval("run-as range %d+%d: want a positive count and an end below 2^31", o.RunAsUIDBase, o.RunAsUIDCount)
		}
	}

	switch a := &cfg.Agent; a.Transport {
	case hypervisor.TransportVsock:
		if a.CID < 3 {
			return inval("vsock cid %d: want 3 or more", a.CID)
		}
		if a.Port == 0 {
			return inval("no vsock port for the agent")
		}
		if a.VsockUnixDir != "" {
			return inval("vsock over unix sockets (%s) reaches an agent outside a VM; a VM's agent is on AF_VSOCK", a.VsockUnixDir)
		}
	case hypervisor.TransportSerial:
		if a.SocketPath == "" {
			a.SocketPath = filepath.Join(cfg.StateDir, "agent.sock")
		}
		if a.PortName == "" {
			a.PortName = DefaultAgentPort
		}
	default:
		return inval("agent transport %q: want %q or %q", a.Transport, hypervisor.TransportVsock, hypervisor.TransportSerial)
	}

	ids := map[string]bool{}
	unique := func(kind, id string) error {
		if !idPattern.MatchString(id) {
			return inval("%s id %q: want letters, digits, '_', '.' or '-'", kind, id)
		}
		if ids[kind+id] {
			return inval("two %s devices named %q", kind, id)
		}
		ids[kind+id] = true
		return nil
	}
	if len(cfg.Filesystems) > 0 && !cfg.SharedMemory && cfg.Template == nil {
		return inval("virtio-fs needs shared memory (Config.SharedMemory)")
	}
	for _, fs := range cfg.Filesystems {
		if err := unique("filesystem", fs.Tag); err != nil {
			return err
		}
		if fs.SocketPath == "" {
			return inval("filesystem %q: no vhost-user socket", fs.Tag)
		}
		if q := fs.QueueSize; q != 0 && (q&(q-1) != 0 || q > 1024) {
			return inval("filesystem %q: queue size %d: want a power of two up to 1024", fs.Tag, q)
		}
	}
	for _, b := range cfg.Blocks {
		if err := unique("block", b.ID); err != nil {
			return err
		}
		if b.Path == "" {
			return inval("block device %q: no path", b.ID)
		}
		switch b.Format {
		case "", "raw", "qcow2":
		default:
			return inval("block device %q: format %q: want raw or qcow2", b.ID, b.Format)
		}
	}
	for _, n := range cfg.Networks {
		if err := unique("network", n.ID); err != nil {
			return err
		}
		if err := validateNetwork(n); err != nil {
			return err
		}
	}
	if r := cfg.RootImage; r != nil {
		if o.Machine != MachineQ35 {
			return inval("a root image needs virtio-pmem, which the %s machine lacks: use %s", o.Machine, MachineQ35)
		}
		if !filepath.IsAbs(r.Path) {
			return inval("root image %q is not an absolute path", r.Path)
		}
		if r.Size <= 0 || r.Size%rootImageAlign != 0 || r.Size > maxRootImage {
			return inval("root image %s: size %d: want a positive multiple of 2 MiB up to %d GiB", r.Path, r.Size, maxRootImage>>30)
		}
		if r.FSType != "erofs" {
			return inval("root image %s: file system %q: want erofs", r.Path, r.FSType)
		}
	}
	if cfg.HotplugNICs > 0 && o.Machine == MachineMicroVM {
		return inval("%d hot-pluggable NICs: the %s machine cannot hot-add devices", cfg.HotplugNICs, MachineMicroVM)
	}
	if cfg.HotplugNICs > maxHotplugNICs {
		return inval("%d hot-pluggable NICs: want at most %d", cfg.HotplugNICs, maxHotplugNICs)
	}
	if cfg.HotplugBlocks > 0 && o.Machine == MachineMicroVM {
		return inval("%d hot-pluggable disks: the %s machine cannot hot-add devices", cfg.HotplugBlocks, MachineMicroVM)
	}
	if cfg.HotplugBlocks > maxHotplugBlocks {
		return inval("%d hot-pluggable disks: want at most %d", cfg.HotplugBlocks, maxHotplugBlocks)
	}
	return validateTemplate(cfg, o)
}

// validateNetwork checks one NIC, at boot or hot-added.
func validateNetwork(n hypervisor.NetworkDevice) error {
	inval := func(format string, args ...any) error {
		return fmt.Errorf("qemu: network %q: "+format+": %w", append([]any{n.ID}, append(args, errdefs.ErrInvalidArgument)...)...)
	}
	if !idPattern.MatchString(n.ID) {
		return inval("want an id of letters, digits, '_', '.' or '-'")
	}
	if n.TapName == "" && len(n.FDs) == 0 {
		return inval("neither a tap name nor tap file descriptors")
	}
	if n.MAC != "" {
		if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
			return inval("MAC address %q", n.MAC)
		}
	}
	if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
		return inval("MTU %d: want 68 to 65535", n.MTU)
	}
	return nil
}

// defaultCPUModel picks -cpu. Under KVM the host CPU. Under TCG qemu64
// with ARAT (an always-running APIC timer): without it an idle microvm guest
// keeps QEMU at about 6% of a host CPU (0.7% with it). "max" booted no
// faster to a measurable degree (2.6-3.4 s vs 3.0-3.7 s on q35, within the
// noise) and enables features TCG emulates slowly.
func defaultCPUModel(accel string) string {
	if accel == AccelKVM {
		return "host"
	}
	return "qemu64,+arat"
}
