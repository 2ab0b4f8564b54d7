package sandbox

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/tracing"
)

// warmTestConfig is a configuration a warm sandbox may boot with.
func warmTestConfig() Config {
	return Config{
		ID:            "warm-0123456789abcdef",
		StateRoot:     "/run/hull",
		Transport:     hypervisor.TransportSerial,
		AgentLogLevel: "info",
		AgentLogMax:   1 << 20,
		CallTimeout:   5 * time.Second,
		Virtiofs:      VirtiofsConfig{Cache: "auto"},
		Cgroup:        CgroupConfig{Path: "/hull-factory/warm-0123456789abcdef"},
		VM: hypervisor.Config{
			Kernel: "/usr/share/hull/vmlinux", Initrd: "/usr/share/hull/initrd.img",
			KernelParams: []string{"quiet"},
			VCPUs:        1, MemoryMiB: 256, MaxVCPUs: 4, MaxMemoryMiB: 4096,
			HotplugNICs: 2, HotplugBlocks: 2,
		},
	}
}

func TestAdoptMismatch(t *testing.T) {
	tests := []struct {
		name  string
		pod   func(*Config)
		field string // "" when the pod adopts
	}{
		{"same", func(*Config) {}, ""},
		{"pod-level parts differ", func(c *Config) {
			c.ID, c.Hostname, c.ShmSize, c.NetNS, c.KillTimeout = "pod@default", "web", 1<<20, "/var/run/netns/p", time.Second
			c.Cgroup = CgroupConfig{Path: "/kubepods/pod1/sb", MemoryOverheadMiB: 64}
			c.DialTimeout = time.Minute
		}, ""},
		{"grows within the limits", func(c *Config) { c.VM.VCPUs, c.VM.MemoryMiB = 4, 4096 }, ""},
		{"state root", func(c *Config) { c.StateRoot = "/var/run/other" }, "state_root"},
		{"transport", func(c *Config) { c.Transport = hypervisor.TransportVsock }, "transport"},
		{"vsock port", func(c *Config) { c.VsockPort = 1025 }, "vsock_port"},
		{"vsock fallback", func(c *Config) { c.VsockFallback = true }, "vsock_fallback"},
		{"agent log level", func(c *Config) { c.AgentLogLevel = "debug" }, "agent_log_level"},
		{"debug console", func(c *Config) { c.DebugConsole = true }, "debug_console"},
		{"tracing", func(c *Config) { c.Tracing = &tracing.Exporter{} }, "tracing"},
		{"agent log", func(c *Config) { c.AgentLogMax = 0 }, "agent_log_max"},
		{"call timeout", func(c *Config) { c.CallTimeout = time.Minute }, "call_timeout"},
		{"virtiofs", func(c *Config) { c.Virtiofs.Cache = "none" }, "virtiofs"},
		{"no shared fs", func(c *Config) { c.SharedFS = SharedFSNone }, "shared_fs"},
		{"shared fs named", func(c *Config) { c.SharedFS = SharedFSVirtioFS }, ""},
		{"copy limits", func(c *Config) { c.CopyLimits.File = 1 }, "copy limits"},
		{"kernel", func(c *Config) { c.VM.Kernel = "/other/vmlinux" }, "vm.kernel"},
		{"initrd", func(c *Config) { c.VM.Initrd = "/other/initrd" }, "vm.initrd"},
		{"root image", func(c *Config) {
			c.VM.RootImage = &hypervisor.RootImage{Path: "/img/rootfs.erofs", Size: 2 << 20, FSType: "erofs"}
		}, "vm.root_image"},
		{"kernel params", func(c *Config) { c.VM.KernelParams = []string{"quiet", "debug"} }, "vm.kernel_params"},
		{"vm debug", func(c *Config) { c.VM.Debug = true }, "vm.debug"},
		{"own netns", func(c *Config) { c.VM.OwnNetNS = true }, "vm.own_netns"},
		{"shared memory", func(c *Config) { c.VM.SharedMemory = true }, "vm.shared_memory"},
		{"max vcpus", func(c *Config) { c.VM.MaxVCPUs = 8 }, "vm.max_vcpus"},
		{"max memory", func(c *Config) { c.VM.MaxMemoryMiB = 8192 }, "vm.max_memory_mib"},
		{"fewer hotplug nics", func(c *Config) { c.VM.HotplugNICs = 1 }, ""},
		{"more hotplug nics", func(c *Config) { c.VM.HotplugNICs = 3 }, "vm.hotplug_nics"},
		// The shim's configuration (launch.SandboxConfig) reserves no NIC
		// slots: a cold start attaches the pod network at boot.
		{"pod network, the pod reserving no slots", func(c *Config) { c.NetNS, c.VM.HotplugNICs = "/var/run/netns/p", 0 }, ""},
		{"fewer hotplug disks", func(c *Config) { c.VM.HotplugBlocks = 1 }, ""},
		{"more hotplug disks", func(c *Config) { c.VM.HotplugBlocks = 9 }, "vm.hotplug_blocks"},
		{"filesystems", func(c *Config) { c.VM.Filesystems = []hypervisor.FilesystemDevice{{Tag: "x", SocketPath: "/s"}} }, "vm.filesystems"},
		{"blocks", func(c *Config) { c.VM.Blocks = []hypervisor.BlockDevice{{ID: "b", Path: "/dev/null"}} }, "vm.blocks"},
		{"networks", func(c *Config) { c.VM.Networks = []hypervisor.NetworkDevice{{ID: "n", TapName: "tap0"}} }, "vm.networks"},
		{"fewer vcpus", func(c *Config) { c.VM.VCPUs = 0 }, "vm.vcpus"},
		{"vcpus beyond the limit", func(c *Config) { c.VM.VCPUs = 5 }, "vm.vcpus"},
		{"less memory", func(c *Config) { c.VM.MemoryMiB = 128 }, "vm.memory_mib"},
		{"memory beyond the limit", func(c *Config) { c.VM.MemoryMiB = 4097 }, "vm.memory_mib"},
		{"no pod cgroup", func(c *Config) { c.Cgroup.Path = "" }, "cgroup"},
		{"runtime's own netns", func(c *Config) { c.NetNS, c.NetNSOwn = "/proc/self/ns/net", true }, "netns_own"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := warmTestConfig()
			tc.pod(&pod)
			err := adoptMismatch(warmTestConfig(), pod)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("got %v, want the pod to adopt", err)
				}
				return
			}
			var na *NotAdoptableError
			if !errors.Is(err, ErrNotAdoptable) || !errors.As(err, &na) || !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("got %v, want ErrNotAdoptable", err)
			}
			if na.Field != tc.field {
				t.Fatalf("field %q (%v), want %q", na.Field, err, tc.field)
			}
		})
	}
	t.Run("network without slots", func(t *testing.T) {
		warm := warmTestConfig()
		warm.VM.HotplugNICs = 0
		pod := warm
		pod.NetNS = "/var/run/netns/p"
		var na *NotAdoptableError
		if err := adoptMismatch(warm, pod); !errors.As(err, &na) || na.Field != "vm.hotplug_nics" {
			t.Fatalf("got %v, want vm.hotplug_nics not adoptable", err)
		}
	})
}

func TestDescriptionMismatch(t *testing.T) {
	warm := hypervisor.Description{Driver: "qemu", Binary: "/usr/bin/qemu-system-x86_64", Machine: "q35", Accel: "tcg", PID: 10}
	tests := []struct {
		name  string
		pod   func(*hypervisor.Description)
		field string
	}{
		{"same", func(d *hypervisor.Description) { d.PID = 0 }, ""},
		{"driver", func(d *hypervisor.Description) { d.Driver = "other" }, "hypervisor.driver"},
		{"binary", func(d *hypervisor.Description) { d.Binary = "/opt/qemu" }, "hypervisor.binary"},
		{"machine", func(d *hypervisor.Description) { d.Machine = "microvm" }, "hypervisor.machine"},
		{"accel", func(d *hypervisor.Description) { d.Accel = "kvm" }, "hypervisor.accel"},
		{"cpu model", func(d *hypervisor.Description) { d.CPUModel = "max" }, "hypervisor.cpu_model"},
		{"qemu drops root", func(d *hypervisor.Description) { d.RunAsUIDs = "200000-200099" }, "hypervisor.run_as_uids"},
		{"free page reporting", func(d *hypervisor.Description) { d.FreePageReporting = true }, "hypervisor.free_page_reporting"},
		{"firmware", func(d *hypervisor.Description) { d.Firmware = "seabios" }, "hypervisor.qemu.firmware"},
		{"only the process differs", func(d *hypervisor.Description) { d.PID, d.StartTime, d.StateDir, d.Cgroup = 0, 0, "/x", "/y" }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := warm
			tc.pod(&pod)
			err := descriptionMismatch(warm, pod)
			var na *NotAdoptableError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("got %v, want none", err)
			case tc.field != "" && (!errors.As(err, &na) || na.Field != tc.field):
				t.Fatalf("got %v, want %s not adoptable", err, tc.field)
			}
		})
	}
}

// relocatingVM is a VM that can change hands; MoveStateDir runs the
// rename and remembers the directory.
type relocatingVM struct {
	stoppableVM
	dir, cgroup string
}

func (v *relocatingVM) MoveStateDir(dir string, rename func() error) error {
	if err := rename(); err != nil {
		return err
	}
	v.dir = dir
	return nil
}

func (v *relocatingVM) MoveCgroup(path string) error { v.cgroup = path; return nil }

func (v *relocatingVM) Describe() hypervisor.Description {
	return hypervisor.Description{Driver: "relocating", PID: 4242, StartTime: 99, StateDir: v.dir}
}

func readTestRecord(t *testing.T, dir string) record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, recordName))
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// warmForMove is a warm sandbox's state directory under root, with its
// record and agent log, held by a relocatingVM.
func warmForMove(t *testing.T, root string) *Sandbox {
	t.Helper()
	cfg := warmTestConfig()
	cfg.StateRoot = root
	dir := StateDir(root, cfg.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	vm := &relocatingVM{stoppableVM: stoppableVM{done: make(chan struct{})}, dir: dir}
	lf, err := child.OpenLog(filepath.Join(dir, AgentLogName), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lf.Close() })
	s := &Sandbox{id: cfg.ID, stateDir: dir, state: StateRunning, vm: vm, agentLog: lf}
	if err := writeRecord(dir, s.record()); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMoveStateDirKeepsTheRecordTrue(t *testing.T) {
	root := t.TempDir()
	s := warmForMove(t, root)
	old := s.stateDir
	pod := warmTestConfig()
	pod.StateRoot, pod.ID = root, "a-pod-id-longer-than-thirty-one-bytes@k8s.io"
	if err := s.moveStateDir(pod); err != nil {
		t.Fatal(err)
	}
	want := StateDir(root, pod.ID)
	if s.StateDir() != want || s.ID() != pod.ID {
		t.Fatalf("sandbox %s in %s, want %s in %s", s.ID(), s.StateDir(), pod.ID, want)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the warm state directory is still there: %v", err)
	}
	if vm := s.vm.(*relocatingVM); vm.dir != want {
		t.Fatalf("the driver's state directory is %s, want %s", vm.dir, want)
	}
	r := readTestRecord(t, want)
	if r.ID != pod.ID || r.VMPID != 4242 || r.VMStartTime != 99 {
		t.Fatalf("record %+v, want the pod's ID and the VM's process", r)
	}
	// Find and Cleanup know the sandbox by its new name.
	if dir, id, err := Find(root, pod.ID); err != nil || dir != want || id != pod.ID {
		t.Fatalf("Find: %s %s %v", dir, id, err)
	}
	// The agent log goes on in the new directory, rotation included.
	if got := s.agentLog.Path(); got != filepath.Join(want, AgentLogName) {
		t.Fatalf("agent log at %s", got)
	}
	for range 3 {
		if _, err := s.agentLog.Write([]byte(strings.Repeat("x", 40) + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.agentLog.Err(); err != nil {
		t.Fatalf("agent log after the move: %v", err)
	}
	if _, err := os.Stat(child.RotatedPath(filepath.Join(want, AgentLogName))); err != nil {
		t.Fatalf("agent log did not rotate in the new directory: %v", err)
	}
}

func TestMoveStateDirNeverReplaces(t *testing.T) {
	root := t.TempDir()
	s := warmForMove(t, root)
	old := s.stateDir
	pod := warmTestConfig()
	pod.StateRoot, pod.ID = root, "taken"
	// An empty directory, which a plain rename would replace.
	if err := os.Mkdir(StateDir(root, pod.ID), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.moveStateDir(pod); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("got %v, want ErrAlreadyExists", err)
	}
	if s.StateDir() != old || s.ID() == pod.ID {
		t.Fatalf("sandbox moved to %s (%s) after a failed rename", s.StateDir(), s.ID())
	}
	if r := readTestRecord(t, old); r.ID != warmTestConfig().ID {
		t.Fatalf("record %+v changed", r)
	}
	if got := s.agentLog.Path(); got != filepath.Join(old, AgentLogName) {
		t.Fatalf("agent log at %s after a failed rename", got)
	}
}

func TestAdoptRefuses(t *testing.T) {
	t.Run("not warm", func(t *testing.T) {
		s := &Sandbox{id: "sb", state: StateRunning, vm: staticVM{}}
		if err := s.Adopt(t.Context(), warmTestConfig()); !errdefs.IsFailedPrecondition(err) || errors.Is(err, ErrNotAdoptable) {
			t.Fatalf("got %v, want a precondition error", err)
		}
	})
	t.Run("vm exited", func(t *testing.T) {
		root := t.TempDir()
		s := warmForMove(t, root)
		cfg := warmTestConfig()
		cfg.StateRoot = root
		s.warm = &warmBoot{cfg: cfg}
		_ = s.vm.Stop(t.Context())
		pod := cfg
		pod.ID, pod.NewVM, pod.DialTimeout = "pod", func(hypervisor.Config) (hypervisor.VM, error) { return staticVM{}, nil }, time.Second
		err := s.Adopt(t.Context(), pod)
		if !errors.Is(err, ErrNotAdoptable) {
			t.Fatalf("got %v, want ErrNotAdoptable", err)
		}
		if s.Warm() {
			t.Fatal("a sandbox given to Adopt is still warm")
		}
		if _, err := os.Stat(StateDir(root, pod.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a refused adoption moved the state directory: %v", err)
		}
	})
}

// TestAdoptMismatchKnowsEveryField makes a new field of Config or
// hypervisor.Config a decision: either adoptMismatch compares it (it fixes
// what the VM booted with), or the adoption applies it (the pod's part),
// or Start fills it in.
func TestAdoptMismatchKnowsEveryField(t *testing.T) {
	known := map[reflect.Type][]string{
		reflect.TypeFor[Config](): {
			// Compared.
			"StateRoot", "VM", "Transport", "VsockPort", "VsockFallback", "AgentLogLevel", "DebugConsole",
			"Tracing", "AgentLogMax", "CallTimeout", "Virtiofs", "SharedFS", "CopyLimits",
			// The pod's, applied by Adopt (or refused there: NetNSOwn).
			"ID", "Hostname", "NetNS", "HotplugNetwork", "NetNSOwn", "DNS", "ShmSize", "Cgroup", "KillTimeout",
			"ObserveAgentRPC", "NewVM", "KubeletRootDir",
			// The boot's alone (a warm VM restored from a template is
			// a VM like any other once it runs).
			"BootGate", "DialTimeout", "DialTimeoutMaxScale", "Template", "WarmUp", "WarmUpBinary",
		},
		reflect.TypeFor[hypervisor.Config](): {
			// Compared.
			"Kernel", "Initrd", "RootImage", "KernelParams", "VCPUs", "MemoryMiB", "MaxVCPUs", "MaxMemoryMiB", "SharedMemory",
			"Filesystems", "Blocks", "Networks", "HotplugNICs", "HotplugBlocks", "OwnNetNS", "Debug",
			// Filled in by Start.
			"ID", "StateDir", "Cgroup", "Agent", "Template",
		},
	}
	for typ, names := range known {
		for f := range typ.Fields() {
			if !slices.Contains(names, f.Name) {
				t.Errorf("%s.%s: say whether an adoption compares it (adoptMismatch) or applies it", typ, f.Name)
			}
		}
	}
}

func TestChangedBootFile(t *testing.T) {
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.img")
	kernel := filepath.Join(dir, "vmlinux")
	for _, f := range []string{initrd, kernel} {
		if err := os.WriteFile(f, []byte("boot"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := identify(bootFiles(hypervisor.Config{Kernel: kernel, Initrd: initrd}, ""))
	if err != nil {
		t.Fatal(err)
	}
	if f, err := changedFile(ids); f != "" || err != nil {
		t.Fatalf("nothing changed, got %q, %v", f, err)
	}
	// An initrd rebuilt under the same name, same size.
	next := filepath.Join(dir, "initrd.img.new")
	if err := os.WriteFile(next, []byte("BOOT"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, initrd); err != nil {
		t.Fatal(err)
	}
	if f, err := changedFile(ids); f != initrd || err != nil {
		t.Errorf("replaced initrd: got %q, %v, want %s", f, err, initrd)
	}
	if err := os.Remove(initrd); err != nil {
		t.Fatal(err)
	}
	if f, err := changedFile(ids); f != initrd || err == nil {
		t.Errorf("removed initrd: got %q, %v, want %s and an error", f, err, initrd)
	}
}
