package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/hull-runtime/hull/internal/modlist"
)

// SearchPaths are the places Load looks at, in order, when no path is given.
var SearchPaths = []string{
	"/etc/hull/configuration.toml",
	"/usr/share/defaults/hull/configuration.toml",
}

// MaxStateDirLen bounds runtime.state_dir: a sandbox's sockets are
// <state_dir>/<at most 32 bytes>/virtiofs.sock, and a unix socket path has
// at most 107 bytes (sandbox.StateDir).
const MaxStateDirLen = 60

// Config is the whole configuration. Each section is documented in
// docs/configuration.md.
type Config struct {
	Hypervisor Hypervisor `toml:"hypervisor"`
	Agent      Agent      `toml:"agent"`
	Runtime    Runtime    `toml:"runtime"`
	Image      Image      `toml:"image"`
	Tracing    Tracing    `toml:"tracing"`
	Factory    Factory    `toml:"factory"`

	// Source is the file the configuration was read from, empty for the
	// built-in defaults.
	Source string `toml:"-"`
}

// Hypervisor configures the VM.
type Hypervisor struct {
	// Driver names the hypervisor driver; "qemu" is the only one so far.
	Driver string `toml:"driver"`
	// Kernel and Initrd override the assets named by the image manifest.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// KernelParams are appended to the driver's and the agent's parameters.
	KernelParams []string `toml:"kernel_params"`
	VCPUs        uint32   `toml:"vcpus"`
	MemoryMiB    uint32   `toml:"memory_mib"`
	// MaxVCPUs and MaxMemoryMiB cap the size of a pod VM grown by its
	// pod's limits; a pod asking for more is refused. Zero means the
	// host's CPUs and three quarters of its memory; vCPUs never go beyond
	// the host's CPUs.
	MaxVCPUs     uint32 `toml:"max_vcpus"`
	MaxMemoryMiB uint32 `toml:"max_memory_mib"`
	// Debug keeps the guest kernel's console output and logs the agent at
	// debug level.
	Debug bool `toml:"debug"`
	// FreePageReporting returns the memory a guest frees to the host (a
	// virtio-balloon device with free page reporting; the guest image
	// needs the "balloon" feature).
	FreePageReporting bool `toml:"free_page_reporting"`
	QEMU              QEMU `toml:"qemu"`
}

// QEMU configures the QEMU driver.
type QEMU struct {
	// Path of qemu-system-x86_64; empty means look it up in PATH.
	Path string `toml:"path"`
	// Machine is "q35" or "microvm".
	Machine string `toml:"machine"`
	// Accel is "auto", "kvm" or "tcg".
	Accel string `toml:"accel"`
	// CPUModel overrides the driver's choice of -cpu.
	CPUModel string `toml:"cpu_model"`
	// TSCKHz is the host TSC frequency given to the guest kernel; 0 detects it.
	TSCKHz      uint64   `toml:"tsc_khz"`
	StopTimeout Duration `toml:"stop_timeout"`
	// RunAsUIDBase, when not 0, makes each QEMU drop root after it set up
	// its devices (-runas) to a user ID of its own from
	// [RunAsUIDBase, RunAsUIDBase+RunAsUIDCount), with the same group ID.
	RunAsUIDBase uint32 `toml:"run_as_uid_base"`
	// RunAsUIDCount is the size of that range: how many VMs may run at once.
	RunAsUIDCount uint32 `toml:"run_as_uid_count"`

	// HotplugDisks is how many disks a q35 VM may have hot-added at once
	// for block-device container root filesystems: a PCIe root port is
	// reserved for each at boot. Ignored on microvm, which cannot hot-add.
	HotplugDisks uint32 `toml:"hotplug_disks"`

	// TCGCacheMiB is the size of TCG's translated-code cache (QEMU's
	// -accel tcg,tb-size=) in MiB; unused under KVM. 0 is the QEMU
	// driver's default (qemu.DefaultTCGCacheMiB, the same 44 MiB).
	TCGCacheMiB uint32 `toml:"tcg_cache_mib"`

	// Firmware is a q35 VM's firmware: "qboot" (QEMU's qboot.rom, the
	// default) or "seabios" (QEMU's default BIOS). Ignored on microvm.
	Firmware string `toml:"firmware"`
}

// Agent configures the channel to the agent.
type Agent struct {
	// Transport is "auto" (vsock when /dev/vhost-vsock opens and the guest
	// image has vsock, else serial; see launch.ChooseTransport), "vsock" or
	// "serial".
	Transport string `toml:"transport"`
	// VsockPort is the port the agent listens on with vsock.
	VsockPort uint32 `toml:"vsock_port"`
	// DialTimeout bounds the time from VM start to the agent's first answer.
	DialTimeout Duration `toml:"dial_timeout"`
	// DialTimeoutMaxScale lets the dial timeout grow with the host's load:
	// a dial starting while the 1-minute load average per CPU is L waits
	// DialTimeout x min(max(L, 1), DialTimeoutMaxScale). 1 turns it off.
	DialTimeoutMaxScale uint32 `toml:"dial_timeout_max_scale"`
	// CallTimeout bounds each agent call that has no deadline of its own.
	CallTimeout Duration `toml:"call_timeout"`
	// KillTimeout is how long the host waits for the guest to report the
	// exit of a process it was told to SIGKILL, or to remove a container,
	// before it declares the process dead (status 137) or drops the
	// container from its records on its own.
	KillTimeout Duration `toml:"kill_timeout"`
	// LogLevel is the agent's log level.
	LogLevel string `toml:"log_level"`
	// DebugConsole lets `hull exec` open a root shell in each VM started
	// from now on (the guest image needs a debug shell). For debugging only.
	DebugConsole bool `toml:"debug_console"`
}

// Runtime configures the host side.
type Runtime struct {
	// StateDir holds one directory per sandbox (sockets, console log, pid
	// files); at most MaxStateDirLen bytes.
	StateDir string `toml:"state_dir"`
	// CgroupParent is the cgroup under which each VM gets its own when the
	// container's spec names no cgroupsPath (hull run, hull boot).
	CgroupParent string `toml:"cgroup_parent"`
	LogLevel     string `toml:"log_level"`
	// GuestLogMaxBytes bounds each log file that the guest can fill (the
	// VM console log, virtiofsd's log): at this size the file is rotated
	// once to <name>.1, so each log takes at most twice as much.
	GuestLogMaxBytes int64 `toml:"guest_log_max_bytes"`
	// EnableAnnotations are the hull-specific annotations (io.hull.* and
	// hull.io/*) a container may carry: regular expressions matched
	// against the whole key after its prefix. A hull annotation no entry
	// matches is refused. Empty allows none.
	EnableAnnotations []string `toml:"enable_annotations"`
	// CgroupMemoryOverheadMiB is what the sandbox's cgroup (QEMU and
	// virtiofsd) may use beyond the VM's memory.
	CgroupMemoryOverheadMiB uint32 `toml:"cgroup_memory_overhead_mib"`
	// CgroupCPUOverheadMilli is what the sandbox cgroup's CPU quota adds
	// to the VM's vCPUs, in thousandths of a CPU.
	CgroupCPUOverheadMilli uint32 `toml:"cgroup_cpu_overhead_milli"`

	// MaxConcurrentBoots bounds how many VMs boot at once on the node
	// (all runtimes sharing StateDir); later starts wait for a slot. Zero
	// derives it: the host's CPU count under TCG, four times that with KVM.
	MaxConcurrentBoots uint32 `toml:"max_concurrent_boots"`
	// BootWaitTimeout bounds a start's wait for a boot slot; a start that
	// gets none in time fails saying so. The agent's dial timeout counts
	// from the moment the slot is taken.
	BootWaitTimeout Duration `toml:"boot_wait_timeout"`

	// HostHooks lets the shim run the runtime-namespace hooks (prestart,
	// createRuntime, createContainer, poststart, poststop) of a container
	// outside a CRI pod on the host, as runc does: what nerdctl's CNI
	// setup needs. Off, such a container is refused. CRI pods' containers
	// are refused them either way.
	HostHooks bool `toml:"host_hooks"`

	// SharedFS is how containers' files reach the guest: "virtio-fs" (a
	// shared directory served by virtiofsd) or "none" (no shared file
	// system: container roots must be disks, from containerd's blockfile
	// or erofs snapshotter, and bind sources are copied into the guest at
	// create, bounded by CopyMaxBytes and CopyMaxFileBytes).
	SharedFS string `toml:"shared_fs"`
	// CopyMaxBytes bounds what is copied for one container with
	// SharedFS "none" (file data, link targets and paths).
	CopyMaxBytes int64 `toml:"copy_max_bytes"`
	// CopyMaxFileBytes bounds one copied file.
	CopyMaxFileBytes int64 `toml:"copy_max_file_bytes"`
	// KubeletRootDir is the kubelet's root directory (its --root-dir):
	// with SharedFS "none", a bind whose source is a pod's emptyDir
	// directory below it is made a guest tmpfs. A clean absolute path;
	// no component of it may be a symbolic link (checked when a volume's
	// directory is read).
	KubeletRootDir string `toml:"kubelet_root_dir"`
}

// Values of runtime.shared_fs.
const (
	SharedFSVirtioFS = "virtio-fs"
	SharedFSNone     = "none"
)

// MaxCopyBytes bounds runtime.copy_max_bytes: the copies travel in one
// agent request, and ttRPC's messages hold at most 4 MiB.
const MaxCopyBytes = 3 << 20

// MaxHotplugDisks bounds hypervisor.qemu.hotplug_disks (the QEMU
// driver's own limit).
const MaxHotplugDisks = 16

// MinTCGCacheMiB and MaxTCGCacheMiB bound hypervisor.qemu.tcg_cache_mib
// (besides 0, the default).
const (
	MinTCGCacheMiB = 8
	MaxTCGCacheMiB = 1024
)

// MaxMaxConcurrentBoots bounds runtime.max_concurrent_boots.
const MaxMaxConcurrentBoots = 4096

// Bounds of runtime.guest_log_max_bytes.
const (
	minGuestLogMaxBytes = 4 << 10
	maxGuestLogMaxBytes = 64 << 20
)

// Image configures the guest assets and `hull image build`.
type Image struct {
	// AssetsDir holds the kernel, the initrd and manifest.json.
	AssetsDir string `toml:"assets_dir"`
	// KernelPackage is the Debian package the guest kernel comes from.
	KernelPackage string `toml:"kernel_package"`
	// Compression of the initrd: "zstd", "lz4", "gzip" or "none".
	Compression string `toml:"compression"`
	// Features the image is built with (kernel modules follow from them).
	Features []string `toml:"features"`
	// CacheDir keeps downloaded and unpacked kernel packages.
	CacheDir string `toml:"cache_dir"`

	// Kind picks what the guest boots from: "initrd", "rootfs" (the
	// read-only erofs image of `hull image build --format erofs`, mapped
	// through virtio-pmem with DAX), or "" for the kind the image's
	// manifest records.
	Kind string `toml:"kind"`
}

// Tracing configures the OpenTelemetry spans of the shim, of each pod's
// boot and agent calls, and of the agent in the guest.
type Tracing struct {
	// Enabled turns tracing on; off, no exporter or goroutine exists.
	Enabled bool `toml:"enabled"`
	// Endpoint is the OTLP collector's URL: http://host:port for plain
	// text, https://host:port for TLS. With protocol "http", a URL with
	// no path gets /v1/traces.
	Endpoint string `toml:"endpoint"`
	// Protocol is "grpc" (OTLP/gRPC) or "http" (OTLP/HTTP protobuf).
	Protocol string `toml:"protocol"`
	// SamplingRatio is the share of new traces recorded, 0 to 1; a span
	// whose parent came with a trace context follows the parent's choice.
	SamplingRatio float64 `toml:"sampling_ratio"`
}

// Factory configures how pod VMs start faster than a boot: the VM factory
// (`hull factory serve`, docs/factory.md), a pool of shims each holding a
// booted VM, which pod starts take instead of booting one; and VM templates.
type Factory struct {
	// VMCache is how many booted VMs the factory keeps ready; 0 turns the
	// factory off (`hull factory serve` refuses to run, shims never ask).
	VMCache uint32 `toml:"vm_cache"`
	// Socket is the factory's ttRPC socket, which the shim's start asks
	// for a VM; the warm shims' control sockets are in its directory.
	Socket string `toml:"socket"`
	// CgroupParent is the cgroup under which each warm VM gets its own
	// until a pod takes it (then it moves to the pod's).
	CgroupParent string `toml:"cgroup_parent"`
	// ClaimTimeout bounds the shim's whole claim of a warm VM, from its
	// dial of the factory to the warm shim's acknowledgement; past it the
	// shim boots a VM of its own.
	ClaimTimeout Duration `toml:"claim_timeout"`
	// Template starts a pod's VM from a saved VM template of its VM
	// configuration (`hull factory template create`) instead of booting;
	// without one for the configuration, the VM boots, with a warning.
	// Needs the serial agent transport and the q35 machine.
	Template bool `toml:"template"`
	// TemplateMemory is how a VM started from a template maps the
	// template's RAM: "private" (a copy per VM: no memory saved, nothing
	// shared) or "shared" (the template file mapped copy-on-write: the
	// pages a VM does not write are shared between VMs, a side channel
	// between tenants; virtio-fs cannot work on it, so it needs
	// runtime.shared_fs = "none" and no free page reporting).
	TemplateMemory string `toml:"template_memory"`
	// TemplateDir holds the templates, one directory per configuration
	// key; root-owned, 0700.
	TemplateDir string `toml:"template_dir"`
	// WarmUp runs and removes one throwaway container in each warm
	// sandbox once its VM has booted (sandbox.Config.WarmUp), so that a
	// pod's first container finds the guest's container path already run.
	WarmUp bool `toml:"warm_up"`
}

// MaxFactoryVMCache bounds factory.vm_cache.
const MaxFactoryVMCache = 64

// MaxFactorySocketLen bounds factory.socket: the warm shims' sockets,
// <dir>/warm-<16 hex>.sock, must fit a unix socket path (107 bytes).
const MaxFactorySocketLen = 80

// Duration is a time.Duration written as a Go duration string ("5s").
type Duration struct{ time.Duration }

// UnmarshalText parses "1m30s"-style durations.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Defaults returns the built-in configuration.
func Defaults() *Config {
	return &Config{
		Hypervisor: Hypervisor{
			Driver:       "qemu",
			KernelParams: []string{},
			VCPUs:        1,
			MemoryMiB:    512,
			// Memory a guest frees goes back to the host.
			FreePageReporting: true,
			QEMU: QEMU{
				Machine:       "q35",
				Accel:         "auto",
				StopTimeout:   Duration{5 * time.Second},
				RunAsUIDCount: 1024,
				HotplugDisks:  4,
				TCGCacheMiB:   44,
				Firmware:      "qboot",
			},
		},
		Agent: Agent{
			Transport:   "auto",
			VsockPort:   1024,
			DialTimeout: Duration{30 * time.Second},
			// An overloaded host slows a TCG boot down; up to 2 minutes.
			DialTimeoutMaxScale: 4,
			CallTimeout:         Duration{30 * time.Second},
			KillTimeout:         Duration{5 * time.Second},
			LogLevel:            "info",
		},
		Runtime: Runtime{
			StateDir:     "/run/hull",
			CgroupParent: "hull",
			LogLevel:     "info",
			// Some thousands of console lines: enough for a post-mortem.
			GuestLogMaxBytes:        1 << 20,
			EnableAnnotations:       []string{},
			CgroupMemoryOverheadMiB: 256,
			CgroupCPUOverheadMilli:  250,
			BootWaitTimeout:         Duration{3 * time.Minute},
			SharedFS:                SharedFSVirtioFS,
			CopyMaxBytes:            MaxCopyBytes,
			CopyMaxFileBytes:        1 << 20,
			KubeletRootDir:          "/var/lib/kubelet",
		},
		Image: Image{
			AssetsDir:     "/usr/share/hull",
			KernelPackage: "linux-image-cloud-amd64",
			Compression:   "none",
			Features:      slices.Clone(modlist.AllFeatures),
			CacheDir:      "/var/cache/hull",
		},
		Tracing: Tracing{
			Endpoint:      "http://127.0.0.1:4317",
			Protocol:      "grpc",
			SamplingRatio: 1,
		},
		Factory: Factory{
			Socket:         "/run/hull-factory/factory.sock",
			CgroupParent:   "hull-factory",
			ClaimTimeout:   Duration{2 * time.Second},
			TemplateMemory: "private",
			TemplateDir:    "/var/lib/hull/templates",
			WarmUp:         true,
		},
	}
}

// Load reads the configuration at path, or at the first of SearchPaths that
// exists when path is empty, over the defaults, and validates it. With no
// file anywhere it returns the validated defaults.
func Load(path string) (*Config, error) {
	if path == "" {
		for _, p := range SearchPaths {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
	}
	c := Defaults()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading configuration: %w", err)
		}
		if err := c.decode(b); err != nil {
			return nil, fmt.Errorf("configuration %s: %w", path, err)
		}
		c.Source = path
	}
	if err := c.Validate(); err != nil {
		if c.Source != "" {
			return nil, fmt.Errorf("configuration %s: %w", c.Source, err)
		}
		return nil, err
	}
	return c, nil
}

// Parse decodes a configuration document over the defaults and validates it.
func Parse(b []byte) (*Config, error) {
	c := Defaults()
	if err := c.decode(b); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) decode(b []byte) error {
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			keys := make([]string, 0, len(strict.Errors))
			for _, e := range strict.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return fmt.Errorf("unknown keys %s: %w", strings.Join(keys, ", "), errdefs.ErrInvalidArgument)
		}
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			return fmt.Errorf("line %d column %d: %s: %w", row, col, derr.Error(), errdefs.ErrInvalidArgument)
		}
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Validate checks every value and returns all problems at once, each naming
// its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	oneOf := func(key, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		bad(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
	absOrEmpty := func(key, p string) {
		if p != "" && !filepath.IsAbs(p) {
			bad(key, "%q is not an absolute path", p)
		}
	}
	levels := []string{"trace", "debug", "info", "warn", "error"}

	h := c.Hypervisor
	oneOf("hypervisor.driver", h.Driver, "qemu")
	absOrEmpty("hypervisor.kernel", h.Kernel)
	absOrEmpty("hypervisor.initrd", h.Initrd)
	if h.VCPUs < 1 || h.VCPUs > 255 {
		bad("hypervisor.vcpus", "%d is outside 1..255", h.VCPUs)
	}
	if h.MemoryMiB < 128 {
		bad("hypervisor.memory_mib", "%d is below the minimum of 128", h.MemoryMiB)
	}
	if h.MaxVCPUs != 0 && (h.MaxVCPUs < h.VCPUs || h.MaxVCPUs > 255) {
		bad("hypervisor.max_vcpus", "%d: want 0 (the host's CPUs) or vcpus..255", h.MaxVCPUs)
	}
	if h.MaxMemoryMiB != 0 && h.MaxMemoryMiB < h.MemoryMiB {
		bad("hypervisor.max_memory_mib", "%d is below memory_mib", h.MaxMemoryMiB)
	}
	for i, p := range h.KernelParams {
		if p == "" || strings.ContainsAny(p, " \t\n") {
			bad(fmt.Sprintf("hypervisor.kernel_params[%d]", i), "%q must be one non-empty word", p)
		}
	}
	oneOf("hypervisor.qemu.machine", h.QEMU.Machine, "q35", "microvm")
	oneOf("hypervisor.qemu.accel", h.QEMU.Accel, "auto", "kvm", "tcg")
	oneOf("hypervisor.qemu.firmware", h.QEMU.Firmware, "qboot", "seabios")
	absOrEmpty("hypervisor.qemu.path", h.QEMU.Path)
	if h.QEMU.StopTimeout.Duration <= 0 {
		bad("hypervisor.qemu.stop_timeout", "must be positive")
	}
	if c := h.QEMU.TCGCacheMiB; c != 0 && (c < MinTCGCacheMiB || c > MaxTCGCacheMiB) {
		bad("hypervisor.qemu.tcg_cache_mib", "%d: want 0 (the default) or %d..%d", c, MinTCGCacheMiB, MaxTCGCacheMiB)
	}
	if h.QEMU.HotplugDisks > MaxHotplugDisks {
		bad("hypervisor.qemu.hotplug_disks", "%d: want at most %d", h.QEMU.HotplugDisks, MaxHotplugDisks)
	}
	if h.QEMU.RunAsUIDBase != 0 && (h.QEMU.RunAsUIDCount == 0 || uint64(h.QEMU.RunAsUIDBase)+uint64(h.QEMU.RunAsUIDCount) > 1<<31) {
		bad("hypervisor.qemu.run_as_uid_count", "must be positive, and the range must end below 2^31")
	}

	a := c.Agent
	oneOf("agent.transport", a.Transport, "auto", "vsock", "serial")
	if a.VsockPort == 0 {
		bad("agent.vsock_port", "must not be 0")
	}
	if a.DialTimeout.Duration <= 0 {
		bad("agent.dial_timeout", "must be positive")
	}
	if a.DialTimeoutMaxScale < 1 || a.DialTimeoutMaxScale > 100 {
		bad("agent.dial_timeout_max_scale", "%d is outside 1..100", a.DialTimeoutMaxScale)
	}
	if a.CallTimeout.Duration <= 0 {
		bad("agent.call_timeout", "must be positive")
	}
	if a.KillTimeout.Duration <= 0 {
		bad("agent.kill_timeout", "must be positive")
	}
	oneOf("agent.log_level", a.LogLevel, levels...)

	r := c.Runtime
	if !filepath.IsAbs(r.StateDir) {
		bad("runtime.state_dir", "%q is not an absolute path", r.StateDir)
	} else if len(r.StateDir) > MaxStateDirLen {
		bad("runtime.state_dir", "%q has %d bytes, at most %d fit: the sandboxes' unix sockets live below it", r.StateDir, len(r.StateDir), MaxStateDirLen)
	}
	if r.CgroupParent == "" || strings.Contains(r.CgroupParent, "..") || filepath.IsAbs(r.CgroupParent) {
		bad("runtime.cgroup_parent", "%q must be a relative cgroup path without ..", r.CgroupParent)
	}
	if r.CgroupMemoryOverheadMiB < 64 || r.CgroupMemoryOverheadMiB > 1<<20 {
		bad("runtime.cgroup_memory_overhead_mib", "%d is outside 64..1048576: QEMU alone needs tens of MiB", r.CgroupMemoryOverheadMiB)
	}
	if r.CgroupCPUOverheadMilli > 255000 {
		bad("runtime.cgroup_cpu_overhead_milli", "%d is above 255000", r.CgroupCPUOverheadMilli)
	}
	oneOf("runtime.log_level", r.LogLevel, levels...)
	if r.MaxConcurrentBoots > MaxMaxConcurrentBoots {
		bad("runtime.max_concurrent_boots", "%d is above %d", r.MaxConcurrentBoots, MaxMaxConcurrentBoots)
	}
	if r.BootWaitTimeout.Duration <= 0 {
		bad("runtime.boot_wait_timeout", "must be positive")
	}
	oneOf("runtime.shared_fs", r.SharedFS, SharedFSVirtioFS, SharedFSNone)
	if r.CopyMaxBytes < 1 || r.CopyMaxBytes > MaxCopyBytes {
		bad("runtime.copy_max_bytes", "%d is outside 1..%d (one agent request carries the copies)", r.CopyMaxBytes, int64(MaxCopyBytes))
	}
	if r.CopyMaxFileBytes < 1 || r.CopyMaxFileBytes > r.CopyMaxBytes {
		bad("runtime.copy_max_file_bytes", "%d is outside 1..copy_max_bytes (%d)", r.CopyMaxFileBytes, r.CopyMaxBytes)
	}
	if !filepath.IsAbs(r.KubeletRootDir) || filepath.Clean(r.KubeletRootDir) != r.KubeletRootDir || r.KubeletRootDir == "/" {
		bad("runtime.kubelet_root_dir", "%q must be a clean absolute path other than /", r.KubeletRootDir)
	}
	if r.GuestLogMaxBytes < minGuestLogMaxBytes || r.GuestLogMaxBytes > maxGuestLogMaxBytes {
		bad("runtime.guest_log_max_bytes", "%d is outside %d..%d", r.GuestLogMaxBytes, int64(minGuestLogMaxBytes), int64(maxGuestLogMaxBytes))
	}
	for i, re := range r.EnableAnnotations {
		if _, err := CompileAnnotation(re); err != nil {
			bad(fmt.Sprintf("runtime.enable_annotations[%d]", i), "%v", err)
		}
	}

	im := c.Image
	if !filepath.IsAbs(im.AssetsDir) {
		bad("image.assets_dir", "%q is not an absolute path", im.AssetsDir)
	}
	if !filepath.IsAbs(im.CacheDir) {
		bad("image.cache_dir", "%q is not an absolute path", im.CacheDir)
	}
	if im.KernelPackage == "" {
		bad("image.kernel_package", "must not be empty")
	}
	oneOf("image.compression", im.Compression, "zstd", "lz4", "gzip", "none")
	oneOf("image.kind", im.Kind, "", "initrd", "rootfs")
	for _, f := range im.Features {
		if !slices.Contains(modlist.AllFeatures, f) {
			bad("image.features", "unknown feature %q", f)
		}
	}
	tr := c.Tracing
	oneOf("tracing.protocol", tr.Protocol, "grpc", "http")
	if u, err := url.Parse(tr.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("tracing.endpoint", "%q is not an http:// or https:// URL with a host", tr.Endpoint)
	}
	if !(tr.SamplingRatio >= 0 && tr.SamplingRatio <= 1) {
		bad("tracing.sampling_ratio", "%v is outside 0..1", tr.SamplingRatio)
	}
	fa := c.Factory
	if fa.VMCache > MaxFactoryVMCache {
		bad("factory.vm_cache", "%d is above %d", fa.VMCache, MaxFactoryVMCache)
	}
	if !filepath.IsAbs(fa.Socket) || filepath.Clean(fa.Socket) != fa.Socket || len(fa.Socket) > MaxFactorySocketLen {
		bad("factory.socket", "%q must be a clean absolute path of at most %d bytes", fa.Socket, MaxFactorySocketLen)
	} else if d := filepath.Dir(fa.Socket); d == filepath.Clean(r.StateDir) || strings.HasPrefix(d, filepath.Clean(r.StateDir)+"/") {
		// Every directory under the state root is taken for a sandbox's.
		bad("factory.socket", "%q must not be below runtime.state_dir", fa.Socket)
	}
	if fa.CgroupParent == "" || strings.Contains(fa.CgroupParent, "..") || filepath.IsAbs(fa.CgroupParent) {
		bad("factory.cgroup_parent", "%q must be a relative cgroup path without ..", fa.CgroupParent)
	}
	if fa.ClaimTimeout.Duration <= 0 || fa.ClaimTimeout.Duration > time.Minute {
		bad("factory.claim_timeout", "%s is outside (0, 1m]", fa.ClaimTimeout)
	}
	if fa.VMCache > 0 && c.Hypervisor.QEMU.Machine != "q35" {
		bad("factory.vm_cache", "warm VMs need the q35 machine (hypervisor.qemu.machine), which hot-adds the network of the pod that takes one")
	}
	oneOf("factory.template_memory", fa.TemplateMemory, "private", "shared")
	if !filepath.IsAbs(fa.TemplateDir) || filepath.Clean(fa.TemplateDir) != fa.TemplateDir {
		bad("factory.template_dir", "%q is not a clean absolute path", fa.TemplateDir)
	}
	if fa.Template && c.Agent.Transport == "vsock" {
		bad("factory.template", "VM templates need the serial agent transport (agent.transport = \"serial\" or \"auto\")")
	}
	if fa.Template && c.Hypervisor.QEMU.Machine != "q35" {
		bad("factory.template", "VM templates need the q35 machine (hypervisor.qemu.machine)")
	}
	if fa.Template && fa.TemplateMemory == "shared" && r.SharedFS != SharedFSNone {
		bad("factory.template_memory", "\"shared\" maps guest RAM copy-on-write, which virtio-fs cannot use: it needs runtime.shared_fs = \"none\"")
	}
	if fa.Template && fa.TemplateMemory == "shared" && c.Hypervisor.FreePageReporting {
		bad("factory.template_memory", "\"shared\" needs hypervisor.free_page_reporting = false: QEMU punches a reported page out of the template's memory file")
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid configuration: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Encode writes c as TOML.
func (c *Config) Encode() ([]byte, error) {
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// CompileAnnotation compiles an entry of runtime.enable_annotations: a
// regular expression that must match the whole annotation key after its
// io.hull. or hull.io/ prefix.
func CompileAnnotation(expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, errors.New("empty expression")
	}
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", expr, err)
	}
	return re, nil
}
