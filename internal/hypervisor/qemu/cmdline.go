package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// Files in the state directory.
const (
	qmpSocketName     = "qmp.sock"
	consoleSocketName = "serial.sock"
	consoleLogName    = "console.log"
	pidFileName       = "qemu.pid"
)

// sandboxOpt is QEMU's own seccomp filter (-sandbox): on top of the
// default deny list it refuses obsolete system calls, every set*uid/set*gid
// (QEMU never needs to change its credentials once running), fork and exec
// (no helper scripts: taps are opened by the runtime, script=no) and
// scheduler and affinity changes (the runtime places QEMU in its cgroup).
// A guest that breaks out of device emulation inherits these limits. With
// runAs, set*uid stay allowed: see runas.go.
func sandboxOpt(runAs bool) props {
	elevate := "deny"
	if runAs {
		elevate = "allow"
	}
	return opt("on", p("obsolete", "deny"), p("elevateprivileges", elevate),
		p("spawn", "deny"), p("resourcecontrol", "deny"))
}

// firstExtraFD is the descriptor number of the first exec.Cmd.ExtraFiles
// entry in the child.
const firstExtraFD = 3

// prop is one key=value of a QEMU option.
type prop struct{ key, value string }

// props renders a QEMU option value: an optional leading bare value (the
// driver or backend name) followed by key=value pairs. Commas in values
// are doubled, which is how QEMU's option parser escapes them.
type props struct {
	head string
	kv   []prop
}

// DefaultTCGCacheMiB is the default size of TCG's translated-code cache
// (tb-size). QEMU's own default is 1 GiB. The cache is written from its
// start and only emptied when full, and emptying it gives no memory back:
// a guest's QEMU keeps as much of it resident as the guest has had
// translated, up to the size, in 2 MiB huge pages. A boot of the hull
// kernel's image translates 40 to 42 MiB and a first container about 15
// more, so with a larger cache an idle pod keeps ~57 MiB of it, and TCG's
// tables of translated blocks (a hash table and a tree, in QEMU's heap)
// grow with it. At 44 MiB the cache is emptied once during the first
// container and refilled with the code still running: an idle pod keeps
// 44 MiB, and the first container costs 1.2 to 1.4 times the CPU time it
// costs with a 128 MiB cache, later ones no more (docs/benchmarks.md).
// Below what a boot translates (40 MiB) the boot empties it and the second
// container costs 3 times; BenchmarkIdleMemory and TestTCGCacheHeadroom
// fail when an idle VM's cache comes within 1 MiB of this size.
const DefaultTCGCacheMiB = 44

func opt(head string, kv ...prop) props { return props{head: head, kv: kv} }

func p(key, value string) prop { return prop{key, value} }

func pInt[T ~int | ~uint32 | ~uint64](key string, v T) prop {
	return prop{key, strconv.FormatUint(uint64(v), 10)}
}

func pBool(key string, v bool) prop {
	if v {
		return prop{key, "on"}
	}
	return prop{key, "off"}
}

func (o props) with(kv ...prop) props {
	o.kv = append(append([]prop(nil), o.kv...), kv...)
	return o
}

func (o props) String() string {
	var b strings.Builder
	b.WriteString(escape(o.head))
	for _, kv := range o.kv {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(kv.key)
		b.WriteByte('=')
		b.WriteString(escape(kv.value))
	}
	return b.String()
}

func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// argv collects QEMU's arguments.
type argv struct{ args []string }

func (a *argv) flag(name string)                 { a.args = append(a.args, "-"+name) }
func (a *argv) add(name, value string)           { a.args = append(a.args, "-"+name, value) }
func (a *argv) addOpt(name string, o props)      { a.add(name, o.String()) }
func (a *argv) device(driver string, kv ...prop) { a.addOpt("device", opt(driver, kv...)) }

// chardevSocket is a unix socket character device; server sockets are
// created by QEMU and do not wait for a client.
func (a *argv) chardevSocket(id, path string, server bool) {
	o := opt("socket", p("id", id), p("path", path))
	if server {
		o = o.with(pBool("server", true), pBool("wait", false))
	}
	a.addOpt("chardev", o)
}

// AgentSerialPorts is the agent's virtio-serial device's max_ports: port 0,
// which QEMU keeps for a console, and the agent's port (QEMU's default is
// 31). The guest sets up a receive and a transmit queue for every port the
// device may have, and QEMU an interrupt vector: with 2 ports instead of
// 31, an idle VM's guest RAM is about 0.6 MiB smaller and QEMU's own
// memory 0.5 MiB (docs/benchmarks.md). A saved VM state holds it, so
// template keys name it (internal/launch).
const AgentSerialPorts = 2

// bus names the transport of virtio devices: PCI on q35, MMIO on microvm.
type bus struct{ suffix string }

func (b bus) virtio(kind string) string { return "virtio-" + kind + b.suffix }

// layout is everything that Args derives from the config besides the
// config itself: resolved options and host facts.
type layout struct {
	binary   string
	machine  string
	accel    string
	cpuModel string
	tscKHz   uint64
	// runAs is the user and group ID QEMU drops to; 0 keeps it root.
	runAs uint32
	// vhostNet gives every NIC queue a vhost-net descriptor, passed after
	// the tap descriptors (see vhostnet.go).
	vhostNet bool
	// freePageReporting is Options.FreePageReporting.
	freePageReporting bool
	// tcgCacheMiB is Options.TCGCacheMiB, the default filled in.
	tcgCacheMiB uint32
	// firmware is Options.Firmware, the default filled in;
	// firmwarePath is qboot's image found by Start (usesQboot).
	firmware     string
	firmwarePath string
	// ramFD is the descriptor of a private clone's RAM (a memfd) in
	// QEMU, passed after the vhost-net descriptors.
	ramFD int
}

// usesQboot says whether a VM of cfg runs qboot: a q35 VM with that
// firmware, except a template and its clones, which keep SeaBIOS: qboot
// does not boot a machine with a vmgenid device (the guest never starts),
// and clones must run the firmware their template ran.
func usesQboot(cfg *hypervisor.Config, l layout) bool {
	return l.machine == MachineQ35 && l.firmware == FirmwareQboot && cfg.Template == nil
}

// buildArgs returns QEMU's argv, program name first. It reads no host
// state except whether block device paths are block special files.
func buildArgs(cfg *hypervisor.Config, l layout) []string {
	a := &argv{args: []string{l.binary}}
	b := bus{suffix: "-pci"}
	if l.machine == MachineMicroVM {
		b.suffix = "-device"
	}

	a.addOpt("name", opt(cfg.ID, pBool("debug-threads", true)))
	a.addOpt("sandbox", sandboxOpt(l.runAs != 0))
	if l.runAs != 0 {
		a.add("runas", fmt.Sprintf("%d:%d", l.runAs, l.runAs))
	}
	a.addOpt("machine", machineOpt(cfg, l))
	if l.accel == AccelTCG {
		// One host thread runs every vCPU (QEMU's default is a thread per
		// vCPU). With a thread per vCPU, 2-vCPU guests of Debian's kernel
		// hung now and then on the development host: about 1 boot in 100,
		// idle with an interrupt lost, or spinning in the kernel's
		// code-patching trap; none in 124 boots with one thread, which was
		// also no slower there. TCG is the fallback when KVM cannot be used,
		// so a guest that always comes up matters more than parallel vCPUs.
		a.addOpt("accel", opt(l.accel, pInt("tb-size", l.tcgCacheMiB), p("thread", "single")))
	} else {
		a.add("accel", l.accel)
	}
	a.add("cpu", l.cpuModel)
	h := headroomOf(cfg, l.machine)
	smp := opt(strconv.FormatUint(uint64(cfg.VCPUs), 10))
	if h.maxVCPUs > 0 {
		smp = smp.with(pInt("maxcpus", h.maxVCPUs))
	}
	a.addOpt("smp", smp)
	m := opt(fmt.Sprintf("%dM", cfg.MemoryMiB))
	if h.maxMemoryMiB > 0 {
		m = m.with(pInt("slots", h.slots))
	}
	if mx := maxMemoryArg(cfg, h); mx > 0 {
		m = m.with(p("maxmem", fmt.Sprintf("%dM", mx)))
	}
	a.addOpt("m", m)
	if t := cfg.Template; t != nil {
		// Guest RAM is a file: the template's, or the clone's copy of it.
		path, share := ramFile(cfg, l.ramFD)
		a.addOpt("object", opt("memory-backend-file",
			p("id", "mem"), p("size", fmt.Sprintf("%dM", cfg.MemoryMiB)), p("mem-path", path), pBool("share", share)))
	} else if cfg.SharedMemory {
		a.addOpt("object", opt("memory-backend-memfd",
			p("id", "mem"), p("size", fmt.Sprintf("%dM", cfg.MemoryMiB)), pBool("share", true)))
	}
	if l.machine == MachineMicroVM {
		// virtiofsd refuses legacy (virtio 0.9) devices, microvm's default.
		a.add("global", "virtio-mmio.force-legacy=false")
	}

	if usesQboot(cfg, l) {
		// By its absolute path (Start finds it in QEMU's data
		// directory): QEMU would look for a bare name in its working
		// directory first.
		bios := l.firmwarePath
		if bios == "" {
			bios = qbootFile
		}
		a.add("bios", bios)
	}
	a.add("kernel", cfg.Kernel)
	if cfg.Initrd != "" {
		a.add("initrd", cfg.Initrd)
	}
	a.add("append", strings.Join(kernelParams(cfg, l), " "))
	if r := cfg.RootImage; r != nil {
		// The image is the operator's file, shared by every VM that boots
		// it: QEMU opens it read-only and maps it read-only, so nothing in
		// the guest can write it. The guest reads its pages in place
		// (DAX): they are the host's page cache of the file. A template or
		// clone maps it shared (still read-only): x-ignore-shared then
		// leaves the region out of the migration stream, and a clone maps
		// the same file in its place (see template.go).
		a.addOpt("object", opt("memory-backend-file", p("id", rootImageMemID), p("mem-path", r.Path),
			pInt("size", uint64(r.Size)), pBool("share", cfg.Template != nil), pBool("readonly", true)))
		a.device("virtio-pmem-pci", p("id", "pmem-root"), p("memdev", rootImageMemID))
	}

	a.flag("nodefaults")
	a.flag("no-user-config")
	a.add("display", "none")
	a.flag("no-reboot") // with panic=-1, a guest panic ends QEMU
	a.flag("S")         // vCPUs start after cgroup placement (see Start)
	if t := cfg.Template; t != nil && t.Restore {
		// The state comes over QMP once capabilities are set (restore.go).
		a.add("incoming", "defer")
	}
	a.add("pidfile", filepath.Join(cfg.StateDir, pidFileName))

	a.chardevSocket("qmp", filepath.Join(cfg.StateDir, qmpSocketName), true)
	a.addOpt("mon", opt("", p("chardev", "qmp"), p("mode", "control")))
	// The serial console goes to a socket that the driver reads into a
	// bounded log (see console.go). wait=on: QEMU waits for the driver
	// before it goes on, so no output is lost and, while the driver does
	// not read, the guest's serial port stalls instead of a buffer growing.
	a.addOpt("chardev", opt("socket", p("id", "console"), p("path", filepath.Join(cfg.StateDir, consoleSocketName)),
		pBool("server", true), pBool("wait", true)))
	a.add("serial", "chardev:console")

	switch ag := cfg.Agent; ag.Transport {
	case hypervisor.TransportSerial:
		a.device(b.virtio("serial"), p("id", "agent-serial"), pInt("max_ports", AgentSerialPorts))
		a.chardevSocket("agent", ag.SocketPath, true)
		port := []prop{p("chardev", "agent"), p("name", ag.PortName)}
		if cfg.Template != nil {
			// Named for its VSERPORT_CHANGE events (see Snapshot).
			port = append([]prop{p("id", agentPortID)}, port...)
		}
		a.device("virtserialport", port...)
	case hypervisor.TransportVsock:
		a.device("vhost-vsock"+b.suffix, p("id", "vsock"), pInt("guest-cid", ag.CID))
	}

	if l.freePageReporting {
		a.device(b.virtio("balloon"), p("id", "balloon"), pBool("free-page-reporting", true))
	}

	if cfg.Template != nil {
		// A new VM generation ID for each clone: a guest kernel with a
		// vmgenid driver reseeds its RNG when it sees the change.
		a.device("vmgenid", p("id", "vmgenid"), p("guid", "auto"))
	}

	for i, fs := range templateBootFilesystems(cfg) {
		id := fmt.Sprintf("fs%d", i)
		q := fs.QueueSize
		if q == 0 {
			q = 1024
		}
		a.chardevSocket(id, fs.SocketPath, false)
		a.device("vhost-user-fs"+b.suffix, p("id", id), p("chardev", id), p("tag", fs.Tag), pInt("queue-size", q))
	}

	for _, bd := range cfg.Blocks {
		a.addOpt("blockdev", blockdevOpt(bd))
		kv := []prop{p("id", "blk-"+bd.ID), p("drive", "blk-"+bd.ID)}
		if len(bd.ID) <= 20 { // virtio-blk serials hold 20 bytes
			kv = append(kv, p("serial", bd.ID))
		}
		a.device(b.virtio("blk"), kv...)
	}

	fd := firstExtraFD
	vhostFD := firstExtraFD + len(extraFDs(cfg))
	for _, n := range cfg.Networks {
		nd := opt("tap", p("id", "net-"+n.ID))
		if len(n.FDs) > 0 {
			fds := make([]string, len(n.FDs))
			for i := range n.FDs {
				fds[i] = strconv.Itoa(fd)
				fd++
			}
			nd = nd.with(p("fds", strings.Join(fds, ":")))
		} else {
			nd = nd.with(p("ifname", n.TapName), p("script", "no"), p("downscript", "no"))
		}
		// vhost=on only with descriptors the runtime opened: QEMU fails
		// when it cannot open /dev/vhost-net itself, and a QEMU that
		// drops root needs no access to the device.
		if l.vhostNet {
			vfds := make([]string, max(len(n.FDs), 1))
			for i := range vfds {
				vfds[i] = strconv.Itoa(vhostFD)
				vhostFD++
			}
			if len(n.FDs) > 0 {
				nd = nd.with(p("vhost", "on"), p("vhostfds", strings.Join(vfds, ":")))
			} else {
				nd = nd.with(p("vhost", "on"), p("vhostfd", vfds[0]))
			}
		}
		a.addOpt("netdev", nd)
		kv := []prop{p("id", "nic-"+n.ID), p("netdev", "net-"+n.ID)}
		if n.MAC != "" {
			kv = append(kv, p("mac", strings.ToLower(n.MAC)))
		}
		if n.MTU != 0 {
			kv = append(kv, pInt("host_mtu", n.MTU))
		}
		if q := len(n.FDs); q > 1 {
			kv = append(kv, pBool("mq", true))
			if l.machine == MachineQ35 {
				kv = append(kv, pInt("vectors", uint64(2*q+2)))
			}
		}
		a.device(b.virtio("net"), kv...)
	}
	if l.machine == MachineQ35 {
		// The pcie.0 root bus takes no hot-added device: each NIC that
		// may come later gets a root port of its own, in its own chassis.
		for i := range cfg.HotplugNICs {
			a.device("pcie-root-port", p("id", nicPortID(i)), p("bus", "pcie.0"), pInt("chassis", i+1))
		}
		// The same for disks, in chassis numbered after the NICs'. A
		// virtio-blk device behind a PCIe port is modern-only and needs
		// no I/O ports: none are reserved, so the disk ports do not eat
		// into the 64 KiB I/O space.
		for i := range cfg.HotplugBlocks {
			a.device("pcie-root-port", p("id", blockPortID(i)), p("bus", "pcie.0"),
				pInt("chassis", uint64(cfg.HotplugNICs+i+1)), pInt("io-reserve", 0))
		}
		if cfg.Template != nil {
			// vhost-user-fs cannot be migrated: a clone gets its shares
			// after the restore, in ports the template has too, in
			// chassis numbered after the disks'.
			for i := range uint32(templateFSPorts) {
				a.device("pcie-root-port", p("id", fsPortID(i)), p("bus", "pcie.0"), pInt("chassis", uint64(cfg.HotplugNICs+cfg.HotplugBlocks+1+i)))
			}
		}
	}
	return a.args
}

func machineOpt(cfg *hypervisor.Config, l layout) props {
	var o props
	switch l.machine {
	case MachineMicroVM:
		// ACPI stays on: the kernel finds the virtio-mmio devices through
		// it. No legacy PIC/PIT, no option ROMs.
		o = opt("microvm", pBool("x-option-roms", false), p("pit", "off"), p("pic", "off"),
			p("rtc", "on"), pBool("isa-serial", true), p("acpi", "on"))
	default:
		o = opt("q35", p("vmport", "off"), pBool("sata", false), pBool("smbus", false), pBool("hpet", false))
	}
	if cfg.SharedMemory || cfg.Template != nil {
		o = o.with(p("memory-backend", "mem"))
	}
	// No KSM merging of guest pages (also the default of every memory
	// backend, the hotplugged DIMMs' too): merged pages are a side channel
	// between VMs, the write timing telling one guest what another holds.
	// KSM skips shared mappings anyway, which guest RAM is with virtio-fs;
	// this keeps it so for any other memory.
	return o.with(pBool("mem-merge", false))
}

func blockdevOpt(bd hypervisor.BlockDevice) props {
	format := bd.Format
	if format == "" {
		format = "raw"
	}
	protocol := "file"
	if st, err := os.Stat(bd.Path); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		protocol = "host_device"
	}
	return opt("", p("node-name", "blk-"+bd.ID), p("driver", format), pBool("read-only", bd.ReadOnly),
		p("file.driver", protocol), p("file.filename", bd.Path))
}

// freePageReportingOrder is the smallest free block, as a page order, that
// a guest reports to the host when free page reporting is on: 0, every
// free 4 KiB page. The kernel's default is a whole 2 MiB pageblock, which
// leaves the host holding what a guest touched at boot and freed in
// smaller pieces: about 2.5 MiB per idle VM (docs/benchmarks.md).
const freePageReportingOrder = 0

// kernelParams are the driver's parameters, then the caller's.
func kernelParams(cfg *hypervisor.Config, l layout) []string {
	ps := []string{"console=ttyS0", "panic=-1", "cryptomgr.notests", "no_timer_check", "rcupdate.rcu_expedited=1"}
	// The dentry and inode caches' hash tables, which the kernel sizes
	// from the boot memory (a bucket per 8 and 16 KiB: 768 KiB for 512
	// MiB) and zeroes at boot, each at an eighth of that: an idle guest
	// caches a few thousand of each, and a guest that caches hundreds of
	// thousands walks chains 8 times as long.
	ps = append(ps, fmt.Sprintf("dhash_entries=%d", uint64(cfg.MemoryMiB)*16), fmt.Sprintf("ihash_entries=%d", uint64(cfg.MemoryMiB)*8))
	if !cfg.Debug {
		// Every console line costs time under emulation.
		ps = append(ps, "quiet")
	}
	if l.freePageReporting {
		// Report free blocks from freePageReportingOrder up, not only
		// whole 2 MiB pageblocks. Linux 6.1 overwrites the parameter
		// when the balloon driver registers; the agent sets it again
		// (internal/agent).
		ps = append(ps, fmt.Sprintf("page_reporting.page_reporting_order=%d", freePageReportingOrder))
	}
	if maxMemoryArg(cfg, headroomOf(cfg, l.machine)) > 0 {
		// The hotplug range (and a root image's pmem region) lies above 4 GiB, which makes the kernel
		// reserve a 64 MiB bounce buffer (swiotlb) for devices that cannot
		// reach it. Ours are virtio devices without an IOMMU, which
		// never bounce.
		ps = append(ps, "swiotlb=noforce")
	}
	if l.accel == AccelTCG && l.tscKHz > 0 {
		// Without these, TSC calibration under TCG can hang (microvm) or
		// fall back to jiffies.
		ps = append(ps, fmt.Sprintf("tsc_early_khz=%d", l.tscKHz), "tsc=reliable")
	}
	if r := cfg.RootImage; r != nil {
		// The first (only) pmem device, read-only, mounted with DAX; the
		// agent is its /init. rootwait: libnvdimm registers the pmem
		// namespace from its own asynchronous domain, which the kernel
		// does not wait for before it mounts the root, so under load
		// /dev/pmem0 could come too late and the guest panicked. A
		// device that never comes leaves the guest waiting, and the
		// boot's own timeout ends it.
		ps = append(ps, "root=/dev/pmem0", "rootwait", "rootfstype="+r.FSType, "rootflags=dax=always", "ro", "init=/init")
	}
	return append(ps, cfg.KernelParams...)
}

// rootImageMemID is the memory backend of the root image.
const rootImageMemID = "rootimg"

const (
	// rootImageAlign is the unit of a root image's size: the guest maps
	// pmem in 2 MiB subsections.
	rootImageAlign = 2 << 20
	// maxRootImage bounds a root image (the agent's image is tens of MiB).
	maxRootImage = 64 << 30
)

// maxMemoryArg is QEMU's maxmem in MiB, 0 for none: boot memory, the
// hotplug headroom, and the root image, which virtio-pmem places in the
// same device memory range as hot-added DIMMs (it takes no DIMM slot).
func maxMemoryArg(cfg *hypervisor.Config, h headroom) uint32 {
	var imageMiB uint32
	if cfg.RootImage != nil {
		imageMiB = uint32((cfg.RootImage.Size + 1<<20 - 1) >> 20)
	}
	if h.maxMemoryMiB == 0 && imageMiB == 0 {
		return 0
	}
	return max(h.maxMemoryMiB, cfg.MemoryMiB) + imageMiB
}

// extraFDs are the tap descriptors Start passes to QEMU, in the order the
// fds= numbers of buildArgs count them; the vhost-net descriptors follow
// them.
func extraFDs(cfg *hypervisor.Config) []uintptr {
	var fds []uintptr
	for _, n := range cfg.Networks {
		fds = append(fds, n.FDs...)
	}
	return fds
}
