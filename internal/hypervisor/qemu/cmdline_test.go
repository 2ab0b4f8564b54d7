package qemu

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// baseConfig is a VM with a serial agent and nothing else.
func baseConfig() hypervisor.Config {
	return hypervisor.Config{
		ID:           "pod-1",
		StateDir:     "/run/hull/vm/pod-1",
		Kernel:       "/usr/share/hull/vmlinuz",
		Initrd:       "/usr/share/hull/initrd.img",
		KernelParams: []string{"hull.debug=0"},
		VCPUs:        2,
		MemoryMiB:    512,
		Agent:        hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial},
	}
}

func withDevices(c hypervisor.Config) hypervisor.Config {
	c.SharedMemory = true
	c.Filesystems = []hypervisor.FilesystemDevice{
		{Tag: "rootfs", SocketPath: "/run/hull/vm/pod-1/fs,0.sock"},
		{Tag: "volume", SocketPath: "/run/hull/vm/pod-1/fs1.sock", QueueSize: 256},
	}
	c.Blocks = []hypervisor.BlockDevice{
		{ID: "ctr1", Path: "/var/lib/hull/ctr1.img", ReadOnly: true},
		{ID: "scratch-volume-with-a-long-name", Path: "/var/lib/hull/scratch.qcow2", Format: "qcow2"},
	}
	c.Networks = []hypervisor.NetworkDevice{
		{ID: "eth0", FDs: []uintptr{7, 8}, MAC: "02:AB:cd:00:00:01", MTU: 1450},
		{ID: "eth1", TapName: "tap-pod1", MAC: "02:ab:cd:00:00:02"},
	}
	return c
}

// rootfs boots from a 34 MiB erofs image instead of the initrd.
func rootfs(c hypervisor.Config) hypervisor.Config {
	c.Initrd = ""
	c.RootImage = &hypervisor.RootImage{Path: "/usr/share/hull/rootfs,1.erofs", Size: 34 << 20, FSType: "erofs"}
	return c
}

func vsock(c hypervisor.Config) hypervisor.Config {
	c.Agent = hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 42, Port: 1024}
	return c
}

func TestArgsGolden(t *testing.T) {
	tests := []struct {
		name string
		cfg  hypervisor.Config
		opts Options
	}{
		{"q35-serial", baseConfig(), Options{Accel: AccelTCG, TSCKHz: 2445432}},
		{"q35-vsock-kvm", vsock(baseConfig()), Options{Accel: AccelKVM}},
		{"q35-serial-devices", withDevices(baseConfig()), Options{Accel: AccelTCG, TSCKHz: 2445432}},
		{"q35-vsock-devices-debug", func() hypervisor.Config {
			c := vsock(withDevices(baseConfig()))
			c.Debug = true
			return c
		}(), Options{Accel: AccelTCG, TSCKHz: 2445432, Binary: "/opt/qemu/bin/qemu-system-x86_64"}},
		{"q35-serial-hotplug", func() hypervisor.Config {
			c := baseConfig()
			c.MaxVCPUs, c.MaxMemoryMiB = 4, 4096
			return c
		}(), Options{Accel: AccelTCG, TSCKHz: 2445432}},
		{"q35-vsock-devices-hotplug-memory", func() hypervisor.Config {
			c := vsock(withDevices(baseConfig()))
			c.MaxVCPUs, c.MaxMemoryMiB = 2, 1000
			return c
		}(), Options{Accel: AccelKVM}},
		{"q35-serial-hotplug-nics", func() hypervisor.Config {
			c := baseConfig()
			c.HotplugNICs = 2
			return c
		}(), Options{Accel: AccelTCG, TSCKHz: 2445432}},
		{"q35-serial-hotplug-nics-disks", func() hypervisor.Config {
			c := baseConfig()
			c.HotplugNICs, c.HotplugBlocks = 1, 2
			return c
		}(), Options{Accel: AccelTCG, TSCKHz: 2445432}},
		{"q35-serial-rootfs", rootfs(baseConfig()), Options{Accel: AccelTCG, TSCKHz: 2445432}},
		{"q35-vsock-devices-rootfs-hotplug", func() hypervisor.Config {
			c := rootfs(vsock(withDevices(baseConfig())))
			c.MaxVCPUs, c.MaxMemoryMiB = 4, 2048
			return c
		}(), Options{Accel: AccelKVM}},
		{"q35-serial-reclaim", baseConfig(), Options{Accel: AccelTCG, TSCKHz: 2445432, FreePageReporting: true}},
		{"q35-serial-seabios", baseConfig(), Options{Accel: AccelTCG, TSCKHz: 2445432, Firmware: FirmwareSeaBIOS}},
		{"microvm-serial-seabios", baseConfig(), Options{Machine: MachineMicroVM, Accel: AccelTCG, TSCKHz: 2445432, Firmware: FirmwareSeaBIOS}},
		{"microvm-serial-reclaim", baseConfig(), Options{Machine: MachineMicroVM, Accel: AccelTCG, TSCKHz: 2445432, FreePageReporting: true}},
		{"microvm-serial", baseConfig(), Options{Machine: MachineMicroVM, Accel: AccelTCG, TSCKHz: 2445432}},
		{"microvm-vsock", vsock(baseConfig()), Options{Machine: MachineMicroVM, Accel: AccelTCG, TSCKHz: 1000000}},
		{"microvm-serial-devices", withDevices(baseConfig()), Options{Machine: MachineMicroVM, Accel: AccelKVM}},
		{"microvm-vsock-devices", vsock(withDevices(baseConfig())), Options{Machine: MachineMicroVM, Accel: AccelTCG, TSCKHz: 2445432, CPUModel: "max"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := argsOf(t, tc.cfg, tc.opts)
			golden(t, filepath.Join("testdata", tc.name+".argv"), argvText(args))
		})
	}
}

// TestArgsGoldenKVMHost covers every argv a KVM host produces: both
// machines, both agent transports, with and without vhost-net, the
// accelerator chosen by the probe (accel = "auto"), with the default
// configuration's free page reporting.
func TestArgsGoldenKVMHost(t *testing.T) {
	for _, machine := range []string{MachineQ35, MachineMicroVM} {
		for _, transport := range []hypervisor.Transport{hypervisor.TransportVsock, hypervisor.TransportSerial} {
			for _, vhostNet := range []bool{true, false} {
				name := fmt.Sprintf("kvm-%s-%s-vhost-net-%s", machine, transport, map[bool]string{true: "on", false: "off"}[vhostNet])
				t.Run(name, func(t *testing.T) {
					cfg := withDevices(baseConfig())
					if transport == hypervisor.TransportVsock {
						cfg = vsock(cfg)
					}
					v, err := New(cfg, Options{Machine: machine, ProbeKVM: fakeProbe(true), FreePageReporting: true})
					if err != nil {
						t.Fatal(err)
					}
					if d := v.Describe(); d.Accel != AccelKVM || len(d.Warnings) > 0 {
						t.Fatalf("accel %s, warnings %q: want kvm without warnings", d.Accel, d.Warnings)
					}
					v.layout.vhostNet = vhostNet // as Start sets it when /dev/vhost-net opens
					args, err := v.Args()
					if err != nil {
						t.Fatal(err)
					}
					golden(t, filepath.Join("testdata", name+".argv"), argvText(args))
				})
			}
		}
	}
}

// TestArgsMicroVMIgnoresLimits: microvm cannot hotplug, so limits leave
// its argv as it is without them.
func TestArgsMicroVMIgnoresLimits(t *testing.T) {
	args := func(c hypervisor.Config) string {
		v, err := New(c, Options{Machine: MachineMicroVM, Accel: AccelTCG, TSCKHz: 1})
		if err != nil {
			t.Fatal(err)
		}
		a, err := v.Args()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(a, " ")
	}
	c := withDevices(baseConfig())
	want := args(c)
	c.MaxVCPUs, c.MaxMemoryMiB = 8, 8192
	if got := args(c); got != want {
		t.Errorf("limits changed the microvm argv:\n%s\nwant\n%s", got, want)
	}
}

// argvText is args with one option per line: readable diffs.
func argvText(args []string) string {
	var b strings.Builder
	b.WriteString(args[0])
	for _, a := range args[1:] {
		if strings.HasPrefix(a, "-") {
			b.WriteString("\n")
		} else {
			b.WriteString(" ")
		}
		b.WriteString(a)
	}
	b.WriteString("\n")
	return b.String()
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update rewrites it):\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*hypervisor.Config, *Options)
		want   string
	}{
		{"empty id", func(c *hypervisor.Config, _ *Options) { c.ID = "" }, "vm id"},
		{"id with slash", func(c *hypervisor.Config, _ *Options) { c.ID = "a/b" }, "vm id"},
		{"relative state dir", func(c *hypervisor.Config, _ *Options) { c.StateDir = "run/x" }, "state dir"},
		{"no kernel", func(c *hypervisor.Config, _ *Options) { c.Kernel = "" }, "no kernel"},
		{"no vcpus", func(c *hypervisor.Config, _ *Options) { c.VCPUs = 0 }, "vCPUs"},
		{"tiny memory", func(c *hypervisor.Config, _ *Options) { c.MemoryMiB = 16 }, "memory"},
		{"too many max vcpus", func(c *hypervisor.Config, _ *Options) { c.MaxVCPUs = 256 }, "at most 256 vCPUs"},
		{"bad machine", func(_ *hypervisor.Config, o *Options) { o.Machine = "pc" }, "machine"},
		{"bad accel", func(_ *hypervisor.Config, o *Options) { o.Accel = "hvf" }, "accelerator"},
		{"bad firmware", func(_ *hypervisor.Config, o *Options) { o.Firmware = "ovmf" }, "firmware"},
		{"escaping cgroup parent", func(_ *hypervisor.Config, o *Options) { o.CgroupParent = "../x" }, "cgroup parent"},
		{"absolute cgroup parent", func(_ *hypervisor.Config, o *Options) { o.CgroupParent = "/x" }, "cgroup parent"},
		{"no transport", func(c *hypervisor.Config, _ *Options) { c.Agent.Transport = "" }, "transport"},
		{"low cid", func(c *hypervisor.Config, _ *Options) {
			c.Agent = hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 2, Port: 1}
		}, "cid"},
		{"no vsock port", func(c *hypervisor.Config, _ *Options) {
			c.Agent = hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 3}
		}, "port"},
		{"fs without shared memory", func(c *hypervisor.Config, _ *Options) {
			c.Filesystems = []hypervisor.FilesystemDevice{{Tag: "a", SocketPath: "/s"}}
		}, "shared memory"},
		{"fs queue size", func(c *hypervisor.Config, _ *Options) {
			c.SharedMemory = true
			c.Filesystems = []hypervisor.FilesystemDevice{{Tag: "a", SocketPath: "/s", QueueSize: 1000}}
		}, "queue size"},
		{"duplicate block", func(c *hypervisor.Config, _ *Options) {
			c.Blocks = []hypervisor.BlockDevice{{ID: "a", Path: "/a"}, {ID: "a", Path: "/b"}}
		}, "two block"},
		{"block format", func(c *hypervisor.Config, _ *Options) {
			c.Blocks = []hypervisor.BlockDevice{{ID: "a", Path: "/a", Format: "vmdk"}}
		}, "format"},
		{"net without tap", func(c *hypervisor.Config, _ *Options) {
			c.Networks = []hypervisor.NetworkDevice{{ID: "eth0"}}
		}, "tap"},
		{"bad mac", func(c *hypervisor.Config, _ *Options) {
			c.Networks = []hypervisor.NetworkDevice{{ID: "eth0", TapName: "t", MAC: "zz"}}
		}, "MAC"},
		{"hotplug nics on microvm", func(c *hypervisor.Config, o *Options) {
			o.Machine = MachineMicroVM
			c.HotplugNICs = 1
		}, "cannot hot-add"},
		{"too many hotplug nics", func(c *hypervisor.Config, _ *Options) { c.HotplugNICs = 9 }, "at most 8"},
		{"too many hotplug disks", func(c *hypervisor.Config, _ *Options) { c.HotplugBlocks = 17 }, "at most 16"},
		{"root image on microvm", func(c *hypervisor.Config, o *Options) {
			o.Machine = MachineMicroVM
			*c = rootfs(*c)
		}, "virtio-pmem"},
		{"root image relative", func(c *hypervisor.Config, _ *Options) {
			*c = rootfs(*c)
			c.RootImage.Path = "rootfs.erofs"
		}, "absolute"},
		{"root image unaligned", func(c *hypervisor.Config, _ *Options) {
			*c = rootfs(*c)
			c.RootImage.Size = 3 << 19
		}, "multiple of 2 MiB"},
		{"root image empty", func(c *hypervisor.Config, _ *Options) {
			*c = rootfs(*c)
			c.RootImage.Size = 0
		}, "multiple of 2 MiB"},
		{"root image fstype", func(c *hypervisor.Config, _ *Options) {
			*c = rootfs(*c)
			c.RootImage.FSType = "ext4 init=/bin/sh"
		}, "want erofs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, o := baseConfig(), Options{Accel: AccelTCG, TSCKHz: 1}
			tc.modify(&c, &o)
			_, err := New(c, o)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an invalid-argument error about %q", err, tc.want)
			}
		})
	}
}

func TestCPUInfoTSC(t *testing.T) {
	tests := []struct {
		name, cpuinfo string
		want          uint64
	}{
		{"constant tsc", "processor\t: 0\ncpu MHz\t\t: 2445.432\nflags\t\t: fpu tsc constant_tsc\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n", 2445432},
		{"variable tsc", "processor\t: 0\ncpu MHz\t\t: 2445.432\nflags\t\t: fpu tsc\n", 0},
		{"no MHz", "processor\t: 0\nflags\t\t: constant_tsc\n", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cpuinfo")
			if err := os.WriteFile(p, []byte(tc.cpuinfo), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := cpuinfoTSCKHz(p); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct{ out, want string }{
		{"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright ...\n", "7.2.22"},
		{"QEMU emulator version 9.1.0\n", "9.1.0"},
		{"something else\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := parseVersion(tc.out); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAutoAccelFallsBackToTCG(t *testing.T) {
	tests := []struct {
		name      string
		usable    bool
		wantAccel string
		warn      bool
	}{
		{"kvm usable", true, AccelKVM, false},
		{"kvm unusable", false, AccelTCG, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := New(baseConfig(), Options{ProbeKVM: fakeProbe(tc.usable), TSCKHz: 1})
			if err != nil {
				t.Fatal(err)
			}
			d := v.Describe()
			if d.Accel != tc.wantAccel || (len(d.Warnings) > 0) != tc.warn {
				t.Errorf("accel %s warnings %q, want %s warn=%v", d.Accel, d.Warnings, tc.wantAccel, tc.warn)
			}
			if tc.warn && !strings.Contains(d.Warnings[0], "KVM unusable: test says no; falling back to TCG") {
				t.Errorf("warning %q", d.Warnings[0])
			}
		})
	}
}

// TestStartLogsTCGFallback: Start logs the fallback at warning level, first
// thing, so the shim's log says why a VM runs under emulation even when the
// start fails.
func TestStartLogsTCGFallback(t *testing.T) {
	tests := []struct {
		name   string
		usable bool
		warn   bool
	}{
		{"kvm usable", true, false},
		{"kvm unusable", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.StateDir = t.TempDir()
			v, err := New(cfg, Options{ProbeKVM: fakeProbe(tc.usable), TSCKHz: 1, Binary: "/nonexistent/qemu-system-x86_64"})
			if err != nil {
				t.Fatal(err)
			}
			logger, hook := logtest.NewNullLogger()
			ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))
			if err := v.Start(ctx); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("Start with a missing binary: %v", err)
			}
			warned := false
			for _, e := range hook.AllEntries() {
				if e.Level == logrus.WarnLevel && strings.Contains(e.Message, "falling back to TCG") {
					warned = true
				}
			}
			if warned != tc.warn {
				t.Errorf("warned about TCG: %v, want %v (log: %v)", warned, tc.warn, hook.AllEntries())
			}
		})
	}
}

func TestNoHotplug(t *testing.T) {
	v, err := New(baseConfig(), Options{Accel: AccelTCG, TSCKHz: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hypervisor.AsHotplugger(v); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("AsHotplugger: %v", err)
	}
	// Snapshot itself refuses a VM that is not a template (TestSnapshotNotTemplate).
	if _, err := hypervisor.AsSnapshotter(v); err != nil {
		t.Errorf("AsSnapshotter: %v", err)
	}
	if _, err := hypervisor.AsPauser(v); err != nil {
		t.Errorf("AsPauser: %v", err)
	}
}

// TestConsoleTail reads the console log of a VM that is not running, as
// after its exit: the rotated part and the current file.
func TestConsoleTail(t *testing.T) {
	tests := []struct {
		name    string
		rotated string
		content string
		n       int
		want    []string
	}{
		{"crlf", "", "a\r\nb\r\nc\r\n", 2, []string{"b", "c"}},
		{"no final newline", "", "a\nb", 5, []string{"a", "b"}},
		{"empty", "", "", 3, nil},
		{"across the rotation", "cut\r\nline one\r\nline t", "wo\r\nline three\r\n", 5, []string{"line one", "line two", "line three"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.StateDir = t.TempDir()
			v, err := New(cfg, Options{Accel: AccelTCG, TSCKHz: 1})
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(cfg.StateDir, consoleLogName)
			if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.rotated != "" {
				if err := os.WriteFile(p+".1", []byte(tc.rotated), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := v.ConsoleTail(tc.n)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// argsOf is the QEMU command line of a VM of cfg and o.
func argsOf(t *testing.T, cfg hypervisor.Config, o Options) []string {
	t.Helper()
	v, err := New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	args, err := v.Args()
	if err != nil {
		t.Fatal(err)
	}
	return args
}
