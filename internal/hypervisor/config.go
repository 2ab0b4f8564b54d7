package hypervisor

import "os"

// Transport names how the host reaches the agent.
type Transport string

const (
	// TransportVsock is AF_VSOCK through a vhost-vsock device.
	TransportVsock Transport = "vsock"
	// TransportSerial is a virtio-serial port whose host end is a unix
	// socket; the runtime multiplexes it with yamux.
	TransportSerial Transport = "serial"
)

// AgentEndpoint is where the agent of a VM listens.
type AgentEndpoint struct {
	Transport Transport `json:"transport"`
	// Vsock: the guest's context ID and the agent's port.
	CID  uint32 `json:"cid,omitempty"`
	Port uint32 `json:"port,omitempty"`
	// VsockUnixDir, for vsock, replaces AF_VSOCK by unix sockets: the
	// host reaches port P at the socket <VsockUnixDir>/<P>, one connection
	// per channel as on AF_VSOCK. It reaches an agent serving outside a VM
	// (hull-agent --listen vsock-unix:<dir>), so that the vsock code path
	// runs on hosts without vhost-vsock; no VM driver sets it.
	VsockUnixDir string `json:"vsock_unix_dir,omitempty"`
	// Serial: the host unix socket bound to the guest port, and the port's
	// name as the guest sees it in /sys/class/virtio-ports/*/name.
	SocketPath string `json:"socket_path,omitempty"`
	PortName   string `json:"port_name,omitempty"`
}

// Config is what every driver needs to build a VM. Drivers take their own
// options beside it.
type Config struct {
	// ID names the VM in logs, cgroups and QEMU's -name.
	ID string
	// StateDir is a private directory that the driver owns for sockets, the
	// console log and its pid file. The caller creates and removes it.
	StateDir string

	Kernel string
	Initrd string
	// RootImage, when set, is the guest's root file system: a read-only
	// image the driver maps into the guest (QEMU: virtio-pmem, DAX) and
	// boots with the agent as init. Initrd is then usually empty.
	RootImage *RootImage
	// KernelParams are appended after the driver's own parameters.
	KernelParams []string

	VCPUs     uint32
	MemoryMiB uint32
	// MaxVCPUs and MaxMemoryMiB are what a Resizer may grow the VM to. Zero,
	// or a value not above VCPUs or MemoryMiB, leaves no room to grow that
	// resource; drivers that cannot hotplug ignore them.
	MaxVCPUs     uint32
	MaxMemoryMiB uint32
	// Cgroup is an existing cgroup (its path below the cgroup root) that
	// the driver moves the hypervisor process into, with all its threads,
	// before the guest runs; the caller made it, sets its limits and
	// removes it. Empty: the driver makes a cgroup of its own and removes
	// it when the VM stops.
	Cgroup string
	// SharedMemory backs guest RAM with a shared memfd; vhost-user devices
	// such as virtio-fs need it.
	SharedMemory bool

	// Agent is the channel to the agent. For vsock the CID must be unique on
	// the host (>= 3); for serial the driver creates the socket in StateDir
	// when SocketPath is empty.
	Agent AgentEndpoint

	Filesystems []FilesystemDevice
	Blocks      []BlockDevice
	Networks    []NetworkDevice
	// HotplugNICs is how many NICs a NetworkAdder may add while the VM
	// runs. Drivers reserve a hotplug slot for each at boot (QEMU's q35 a
	// PCIe root port); a machine that cannot hot-add refuses a value above
	// zero.
	HotplugNICs uint32
	// HotplugBlocks is how many virtio-blk disks a BlockHotplugger may
	// have added at once (block-device container root filesystems). Like
	// HotplugNICs, each takes a hotplug slot reserved at boot; a machine
	// that cannot hot-add refuses a value above zero.
	HotplugBlocks uint32
	// OwnNetNS starts the hypervisor process in a new network namespace
	// of its own, which lives as long as it does: the namespace of a
	// container whose network a runtime hook fills after the VM booted
	// (nerdctl's CNI hook finds it by the VMM's PID), then mirrored into
	// the VM with hot-added NICs. The hypervisor needs no network of its
	// own: its devices are unix sockets and passed descriptors.
	OwnNetNS bool

	// Debug keeps kernel console output (no "quiet").
	Debug bool

	// Template, when set, makes the VM a template (booted to be saved by
	// a Snapshotter) or a clone of one (started from the saved state
	// instead of booting). Nil boots as usual.
	Template *Template
}

// TemplateMemory is how a clone maps the RAM of its template.
type TemplateMemory string

const (
	// TemplateMemoryPrivate gives each clone a copy of the template's
	// memory file, mapped shared: nothing is shared between clones, and
	// vhost-user devices (virtio-fs) work.
	TemplateMemoryPrivate TemplateMemory = "private"
	// TemplateMemoryShared maps the template's memory file private
	// (copy-on-write) in every clone: the pages a clone does not write stay
	// shared between clones in the host's page cache. vhost-user devices
	// need RAM mapped shared, so a clone in this mode has no virtio-fs.
	// Pages shared across tenants are a side channel.
	TemplateMemoryShared TemplateMemory = "shared"
)

// Template is the template side of a VM (see Config.Template).
type Template struct {
	// Dir is the template directory, host-owned: it holds the guest RAM
	// file and the device state. It is never derived from anything the
	// guest or an image says.
	Dir string
	// Restore starts the VM from the state saved in Dir; false boots it
	// with its RAM in Dir, for a Snapshotter to save.
	Restore bool
	// Memory is how a clone maps the template RAM; the private mode when
	// empty.
	Memory TemplateMemory
}

// RootImage is a host-owned, read-only root file system image. The driver
// maps it private and read-only: the guest never writes the file, which
// every VM booting it shares (its pages are the host's page cache).
type RootImage struct {
	// Path is the image file, from the operator's image directory.
	Path string
	// Size is the file's size in bytes: a whole multiple of 2 MiB.
	Size int64
	// FSType is the file system the guest mounts: "erofs".
	FSType string
}

// FilesystemDevice is a vhost-user-fs (virtio-fs) share served by a daemon
// listening on SocketPath; the guest mounts it by Tag.
type FilesystemDevice struct {
	Tag        string
	SocketPath string
	// QueueSize of the request queue; zero for the driver's default.
	QueueSize uint32
}

// BlockDevice is a file or block device given to the guest as virtio-blk.
type BlockDevice struct {
	ID string
	// Path names the file for a disk present at boot. A hot-added disk
	// has File instead: the hypervisor opens nothing by name then.
	Path string
	// File is the host's open descriptor of a hot-added disk's image,
	// opened read-only when ReadOnly, else read-write. The caller keeps
	// and closes it; the hypervisor holds a copy.
	File     *os.File
	ReadOnly bool
	// Format is "raw" unless set.
	Format string
	// Serial is the disk's serial number as the guest reads it
	// (/sys/block/<disk>/serial): at most 20 bytes of [A-Za-z0-9_-].
	// The host chooses it so that the guest finds the disk by it.
	Serial string
}

// NetworkDevice is a virtio-net NIC backed by a tap device, passed by file
// descriptors or opened by name.
type NetworkDevice struct {
	ID      string
	TapName string
	// FDs of the opened tap queues; when set the driver passes them to the
	// hypervisor instead of opening TapName.
	FDs []uintptr
	MAC string
	MTU uint32
}
