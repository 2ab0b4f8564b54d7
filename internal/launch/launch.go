// Package launch turns hull's configuration into a sandbox configuration: it
// finds the guest assets, resolves the agent transport, and picks the
// hypervisor driver. It is the one place where configuration meets drivers,
// so that internal/sandbox stays free of both.
package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/bootslot"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/kvm"
	"github.com/hull-runtime/hull/internal/modlist"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/storage"
	"github.com/hull-runtime/hull/internal/virtiofs"
)

// VhostVsockDevice is the host device vsock needs.
const VhostVsockDevice = "/dev/vhost-vsock"

// TransportChoice is the agent transport of new sandboxes, and why.
type TransportChoice struct {
	Transport hypervisor.Transport
	// Fallback is set when "auto" chose vsock: a VM whose vsock device
	// fails at start is started again over serial
	// (sandbox.Config.VsockFallback). A configured "vsock" fails instead.
	Fallback bool
	// Reason says why, for logs and diagnostics.
	Reason string
}

// ChooseTransport resolves agent.transport. "vsock" and "serial" are taken
// as configured. "auto" is vsock when the host's vhost-vsock device opens
// and the guest image can serve vsock (its manifest lists the vsock
// feature: the kernel has the virtio vsock transport, built in or as a
// module the image loads), serial otherwise. A kernel and initrd
// configured by path have no manifest to tell, so "auto" takes serial for
// them.
func ChooseTransport(c *config.Config) TransportChoice {
	switch c.Agent.Transport {
	case "vsock":
		return TransportChoice{Transport: hypervisor.TransportVsock, Reason: `agent.transport = "vsock"`}
	case "serial":
		return TransportChoice{Transport: hypervisor.TransportSerial, Reason: `agent.transport = "serial"`}
	}
	return chooseAuto(VhostVsockDevice, imageVsock(c))
}

// Transport is the transport of ChooseTransport.
func Transport(c *config.Config) hypervisor.Transport { return ChooseTransport(c).Transport }

// chooseAuto is "auto": vsock when device opens and image is nil (the
// guest image serves vsock), serial otherwise.
func chooseAuto(device string, image error) TransportChoice {
	serial := func(why string) TransportChoice {
		return TransportChoice{Transport: hypervisor.TransportSerial, Reason: why}
	}
	if err := openDevice(device); err != nil {
		return serial(fmt.Sprintf("auto: no usable vhost-vsock (%v)", err))
	}
	if image != nil {
		return serial(fmt.Sprintf("auto: %v", image))
	}
	return TransportChoice{Transport: hypervisor.TransportVsock, Fallback: true, Reason: "auto: " + device + " opens and the guest image has vsock"}
}

// openDevice opens and closes a device read-write, as the hypervisor will:
// a node that exists is not enough (no driver behind it, no access).
// Opening /dev/vhost-vsock only allocates an instance without a CID, which
// the close frees.
func openDevice(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// imageVsock says why the configured guest image cannot serve vsock, or
// nil when it can.
func imageVsock(c *config.Config) error {
	if c.Hypervisor.Kernel != "" && c.Hypervisor.Initrd != "" {
		return errors.New("kernel and initrd configured by path: no image manifest says the guest has vsock")
	}
	m, err := guestimage.ReadManifest(c.Image.AssetsDir)
	if err != nil {
		return err
	}
	if !slices.Contains(m.Features, modlist.FeatureVsock) {
		return fmt.Errorf("the guest image in %s was built without the %s feature", c.Image.AssetsDir, modlist.FeatureVsock)
	}
	return nil
}

// Assets returns the kernel and initrd to boot: the configured paths, or the
// files the manifest in the assets directory names (verified against their
// checksums when verify is set). When the guest boots from the image's root
// file system instead (BootAssets), initrd is "".
func Assets(c *config.Config, verify bool) (kernel, initrd string, err error) {
	b, err := BootAssets(c, verify)
	return b.Kernel, b.Initrd, err
}

// Boot is what a guest boots from.
type Boot struct {
	Kernel string
	// Initrd is empty when Root is set.
	Initrd string
	// Root is the read-only root image of a guest of kind "rootfs".
	Root *hypervisor.RootImage
}

// BootAssets returns what the guest boots: the kernel, and the initrd or
// the root image as image.kind (or else the manifest's kind, except on
// microvm, which boots the initrd) says. The
// configured hypervisor.kernel and hypervisor.initrd replace the image's
// files for an initrd boot. The root image's path and size come from the
// operator's manifest and image directory, never from the guest.
func BootAssets(c *config.Config, verify bool) (Boot, error) {
	b := Boot{Kernel: c.Hypervisor.Kernel, Initrd: c.Hypervisor.Initrd}
	if b.Kernel != "" && b.Initrd != "" && c.Image.Kind != guestimage.KindRootfs {
		return b, nil
	}
	m, err := guestimage.ReadManifest(c.Image.AssetsDir)
	if err != nil {
		return Boot{}, fmt.Errorf("%w; run `hull image build`", err)
	}
	if verify {
		if err := m.Verify(c.Image.AssetsDir); err != nil {
			return Boot{}, err
		}
	}
	if b.Kernel == "" {
		b.Kernel = filepath.Join(c.Image.AssetsDir, m.Kernel.File)
	}
	kind := c.Image.Kind
	if kind == "" {
		kind = m.ImageKind()
		// The manifest's kind is a preference: microvm has no virtio-pmem,
		// so it boots the initrd an erofs build carries too.
		if kind == guestimage.KindRootfs && c.Hypervisor.QEMU.Machine == qemu.MachineMicroVM && m.Initrd != nil {
			kind = guestimage.KindInitrd
		}
	}
	switch kind {
	case guestimage.KindRootfs:
		if m.Rootfs == nil {
			return Boot{}, fmt.Errorf("image.kind %q: the guest image in %s has no root image; build it with `hull image build --format erofs`: %w",
				kind, c.Image.AssetsDir, errdefs.ErrFailedPrecondition)
		}
		if c.Hypervisor.Initrd != "" {
			return Boot{}, fmt.Errorf("hypervisor.initrd is set, and the guest boots from its root image (image kind rootfs): %w", errdefs.ErrInvalidArgument)
		}
		if c.Hypervisor.QEMU.Machine == qemu.MachineMicroVM {
			return Boot{}, fmt.Errorf("image kind rootfs needs virtio-pmem, which the %s machine lacks: set hypervisor.qemu.machine = %q: %w",
				qemu.MachineMicroVM, qemu.MachineQ35, errdefs.ErrInvalidArgument)
		}
		b.Initrd = ""
		b.Root = &hypervisor.RootImage{Path: m.RootfsPath(c.Image.AssetsDir), Size: m.Rootfs.Size, FSType: m.Rootfs.FSType}
	case guestimage.KindInitrd:
		if b.Initrd == "" {
			if m.Initrd == nil {
				return Boot{}, fmt.Errorf("the guest image in %s has no initrd: %w", c.Image.AssetsDir, errdefs.ErrFailedPrecondition)
			}
			b.Initrd = m.InitrdPath(c.Image.AssetsDir)
		}
	default:
		return Boot{}, fmt.Errorf("the guest image in %s has kind %q (want initrd or rootfs): %w", c.Image.AssetsDir, kind, errdefs.ErrDataLoss)
	}
	return b, nil
}

// QEMUOptions maps the configuration onto the QEMU driver's options.
func QEMUOptions(c *config.Config) qemu.Options {
	q := c.Hypervisor.QEMU
	return qemu.Options{
		Binary:       q.Path,
		Machine:      q.Machine,
		Accel:        q.Accel,
		CPUModel:     q.CPUModel,
		TSCKHz:       q.TSCKHz,
		CgroupParent: c.Runtime.CgroupParent,
		StopTimeout:  q.StopTimeout.Duration,
		ConsoleMax:   c.Runtime.GuestLogMaxBytes,

		RunAsUIDBase:  q.RunAsUIDBase,
		RunAsUIDCount: q.RunAsUIDCount,

		FreePageReporting: c.Hypervisor.FreePageReporting,
		TCGCacheMiB:       q.TCGCacheMiB,
		Firmware:          q.Firmware,
	}
}

// TemplateNICs is how many NIC hotplug slots every VM reserves with
// factory.template on (templates need q35), the template's as its clones':
// a template has no NIC of a pod, and a clone hot-adds its pod's network
// into these slots once restored. It equals the warm VMs' and the own
// network namespace's reservation, so that templates, warm VMs and cold
// shims share one template key.
const TemplateNICs = 4

// TemplateConfig is the VM template configuration of c's sandboxes: the
// template directory, the memory mode, and the QEMU options and boot (the
// driver's firmware and kernel parameters, qemu.TemplateBoot) a saved state
// depends on (a clone must run the machine the template ran).
func TemplateConfig(c *config.Config, opts qemu.Options) *sandbox.TemplateConfig {
	return &sandbox.TemplateConfig{
		Root:   c.Factory.TemplateDir,
		Memory: hypervisor.TemplateMemory(c.Factory.TemplateMemory),
		DriverKey: fmt.Sprintf("qemu binary=%s machine=%s accel=%s cpu=%s tsc=%d free-page-reporting=%v agent-serial-ports=%d",
			binaryID(opts.Binary), opts.Machine, opts.Accel, opts.CPUModel, opts.TSCKHz, opts.FreePageReporting, qemu.AgentSerialPorts),
		DriverBoot: func(vc hypervisor.Config) string { return qemu.TemplateBoot(opts, vc) },
	}
}

// binaryID names the QEMU program's version by its path, with symbolic
// links resolved, and the identity of the file there: inode, size,
// modification and change times. A QEMU upgraded or replaced in place gets
// new template keys (a state saved by one QEMU version may not load in
// another), whatever size and modification time the new file keeps: a
// file put in its place has another inode or a later change time, which no
// one can set back. The device number is left out, as in the template
// key's guest files: it may change across reboots.
func binaryID(bin string) string {
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return bin
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return p
	}
	return fmt.Sprintf("%s(ino=%d,size=%d,mtime=%d,ctime=%d)", p, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano())
}

// defaultMaxMemoryMiB caps the default memory limit (3/4 of the host's memory) at
// 512 GiB: QEMU refuses a maxmem that, with the hotplug slots and the PCI
// window, needs more than the 40 physical address bits of the CPU models
// it emulates (about 960 GiB), and no pod VM needs more here.
const defaultMaxMemoryMiB = 512 << 10

// Limits returns how far a VM may grow: hypervisor.max_vcpus and
// max_memory_mib, where 0 means the host's CPU count and three quarters of
// the host's memory (at most 512 GiB), so that no VM takes the whole node.
// vCPUs never exceed the host's CPUs (nor 255).
func Limits(c *config.Config) (vcpus, memoryMiB uint32) {
	return limits(c, uint32(min(runtime.NumCPU(), 255)), hostMemoryMiB())
}

func limits(c *config.Config, hostCPUs, hostMiB uint32) (vcpus, memoryMiB uint32) {
	vcpus, memoryMiB = c.Hypervisor.MaxVCPUs, c.Hypervisor.MaxMemoryMiB
	if vcpus == 0 || vcpus > hostCPUs {
		vcpus = hostCPUs
	}
	if memoryMiB == 0 {
		memoryMiB = min(uint32(uint64(hostMiB)*3/4), defaultMaxMemoryMiB)
	}
	return vcpus, memoryMiB
}

// hostMemoryMiB is the host's RAM, or 0 (no room to grow) when it cannot
// be read.
func hostMemoryMiB() uint32 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint32(min(uint64(si.Totalram)*uint64(si.Unit)>>20, 1<<32-1))
}

// kvmBootFactor is how many more VMs boot at once per host CPU with KVM
// than under TCG, where a booting guest keeps a host CPU busy.
const kvmBootFactor = 4

// kvmProbeTimeout bounds the KVM probe MaxConcurrentBoots may run (its
// result is cached for the host's boot).
const kvmProbeTimeout = 2 * time.Second

// MaxConcurrentBoots returns runtime.max_concurrent_boots, or when it is 0
// the bound derived from the host: its CPU count under TCG, kvmBootFactor
// times that with KVM (hypervisor.qemu.accel, "auto" resolved by the cached
// KVM probe the QEMU driver also uses).
func MaxConcurrentBoots(c *config.Config) int {
	if n := c.Runtime.MaxConcurrentBoots; n > 0 {
		return int(n)
	}
	useKVM := false
	switch c.Hypervisor.QEMU.Accel {
	case qemu.AccelKVM:
		useKVM = true
	case qemu.AccelAuto, "":
		useKVM = kvm.ProbeCached(context.Background(), kvmProbeTimeout, "").Usable
	}
	return concurrentBoots(runtime.NumCPU(), useKVM)
}

func concurrentBoots(cpus int, useKVM bool) int {
	n := max(cpus, 1)
	if useKVM {
		n *= kvmBootFactor
	}
	return min(n, config.MaxMaxConcurrentBoots)
}

// BootGate returns the node's boot admission gate for c.
func BootGate(c *config.Config) *bootslot.Gate {
	return &bootslot.Gate{
		Dir:     sandbox.BootSlotsDir(c.Runtime.StateDir),
		Slots:   MaxConcurrentBoots(c),
		MaxWait: c.Runtime.BootWaitTimeout.Duration,
	}
}

// hotplugDisks is hypervisor.qemu.hotplug_disks on q35, 0 on microvm.
func hotplugDisks(c *config.Config) uint32 {
	if c.Hypervisor.QEMU.Machine == qemu.MachineMicroVM {
		return 0
	}
	return c.Hypervisor.QEMU.HotplugDisks
}

// SandboxConfig builds the configuration to start sandbox id.
func SandboxConfig(c *config.Config, id string) (sandbox.Config, error) {
	boot, err := BootAssets(c, false)
	if err != nil {
		return sandbox.Config{}, err
	}
	opts := QEMUOptions(c)
	level := c.Agent.LogLevel
	if c.Hypervisor.Debug {
		level = "debug"
	}
	maxVCPUs, maxMemoryMiB := Limits(c)
	tc := ChooseTransport(c)
	cgroupPath, err := hostcgroup.Resolve("", c.Runtime.CgroupParent, id)
	if err != nil {
		return sandbox.Config{}, err
	}
	var tpl *sandbox.TemplateConfig
	var nicSlots uint32
	if c.Factory.Template {
		tpl = TemplateConfig(c, opts)
		tc = TransportChoice{Transport: hypervisor.TransportSerial, Reason: "factory.template = true"}
		nicSlots = TemplateNICs
	}
	return sandbox.Config{
		ID:        id,
		StateRoot: c.Runtime.StateDir,
		Template:  tpl,
		VM: hypervisor.Config{
			Kernel:       boot.Kernel,
			Initrd:       boot.Initrd,
			RootImage:    boot.Root,
			KernelParams: append([]string(nil), c.Hypervisor.KernelParams...),
			VCPUs:        c.Hypervisor.VCPUs,
			MemoryMiB:    c.Hypervisor.MemoryMiB,
			MaxVCPUs:     maxVCPUs,
			MaxMemoryMiB: maxMemoryMiB,
			Debug:        c.Hypervisor.Debug,
			// microvm cannot hot-add: no slots, a block rootfs is refused.
			HotplugBlocks: hotplugDisks(c),
			HotplugNICs:   nicSlots,
		},
		NewVM: func(hc hypervisor.Config) (hypervisor.VM, error) {
			return qemu.New(hc, opts)
		},
		BootGate:            BootGate(c),
		Transport:           tc.Transport,
		VsockFallback:       tc.Fallback,
		VsockPort:           c.Agent.VsockPort,
		DialTimeout:         c.Agent.DialTimeout.Duration,
		DialTimeoutMaxScale: float64(c.Agent.DialTimeoutMaxScale),
		CallTimeout:         c.Agent.CallTimeout.Duration,
		KillTimeout:         c.Agent.KillTimeout.Duration,
		AgentLogLevel:       level,
		Hostname:            id,
		// virtio-fs with the daemon's defaults: cache=auto, and a mount
		// namespace sandbox (it needs root, which the runtime has).
		Virtiofs: sandbox.VirtiofsConfig{Cache: virtiofs.CacheAuto, LogMax: c.Runtime.GuestLogMaxBytes},
		SharedFS: c.Runtime.SharedFS,
		CopyLimits: storage.CopyLimits{
			Total: c.Runtime.CopyMaxBytes, File: c.Runtime.CopyMaxFileBytes, Entries: storage.DefaultCopyLimits.Entries,
		},
		KubeletRootDir: c.Runtime.KubeletRootDir,
		DebugConsole:   c.Agent.DebugConsole,
		AgentLogMax:    c.Runtime.GuestLogMaxBytes,
		Cgroup: sandbox.CgroupConfig{
			Path:              cgroupPath,
			MemoryOverheadMiB: c.Runtime.CgroupMemoryOverheadMiB,
			CPUOverheadMilli:  c.Runtime.CgroupCPUOverheadMilli,
		},
	}, nil
}
