package launch

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/modlist"
)

func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		name               string
		maxVCPUs, maxMiB   uint32
		hostCPUs, hostMiB  uint32
		wantVCPUs, wantMiB uint32
	}{
		{"defaults leave the node a quarter", 0, 0, 8, 16384, 8, 12288},
		{"vCPUs never beyond the host", 64, 0, 2, 24576, 2, 18432},
		{"configured caps below the host", 1, 1024, 8, 16384, 1, 1024},
		{"default memory cap bounded", 0, 0, 4, 2 << 20, 4, 512 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Defaults()
			c.Hypervisor.MaxVCPUs, c.Hypervisor.MaxMemoryMiB = tc.maxVCPUs, tc.maxMiB
			v, m := limits(c, tc.hostCPUs, tc.hostMiB)
			if v != tc.wantVCPUs || m != tc.wantMiB {
				t.Errorf("limits %d vCPUs, %d MiB; want %d, %d", v, m, tc.wantVCPUs, tc.wantMiB)
			}
		})
	}
}

func TestSandboxConfigCgroup(t *testing.T) {
	c := config.Defaults()
	c.Hypervisor.Kernel, c.Hypervisor.Initrd = "/k", "/i"
	sc, err := SandboxConfig(c, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	want := c.Runtime
	if sc.Cgroup.Path != "/hull/sb1" || sc.Cgroup.MemoryOverheadMiB != want.CgroupMemoryOverheadMiB || sc.Cgroup.CPUOverheadMilli != want.CgroupCPUOverheadMilli {
		t.Errorf("cgroup config %+v", sc.Cgroup)
	}
}

func TestChooseTransport(t *testing.T) {
	dir := t.TempDir()
	openable := filepath.Join(dir, "vhost-vsock") // a file opens read-write, as a working device does
	if err := os.WriteFile(openable, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	unopenable := filepath.Join(dir, "dir") // exists, but does not open read-write (EISDIR)
	if err := os.Mkdir(unopenable, 0o700); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	noVsock := errors.New("image without vsock")
	for _, tc := range []struct {
		name     string
		device   string
		image    error
		want     hypervisor.Transport
		fallback bool
	}{
		{"device opens, image has vsock", openable, nil, hypervisor.TransportVsock, true},
		{"no device", missing, nil, hypervisor.TransportSerial, false},
		{"device does not open", unopenable, nil, hypervisor.TransportSerial, false},
		{"image without vsock", openable, noVsock, hypervisor.TransportSerial, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := chooseAuto(tc.device, tc.image)
			if got.Transport != tc.want || got.Fallback != tc.fallback || got.Reason == "" {
				t.Errorf("chooseAuto = %+v, want %s, fallback %v, with a reason", got, tc.want, tc.fallback)
			}
		})
	}
	t.Run("configured", func(t *testing.T) {
		c := config.Defaults()
		for name, want := range map[string]hypervisor.Transport{"vsock": hypervisor.TransportVsock, "serial": hypervisor.TransportSerial} {
			c.Agent.Transport = name
			// A configured transport never falls back: vsock fails
			// clearly where it cannot work.
			if got := ChooseTransport(c); got.Transport != want || got.Fallback {
				t.Errorf("agent.transport = %q: %+v", name, got)
			}
		}
	})
}

func TestImageVsock(t *testing.T) {
	write := func(t *testing.T, features []string) string {
		t.Helper()
		dir := t.TempDir()
		b, err := json.Marshal(guestimage.Manifest{Format: "initrd", Features: features})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, guestimage.ManifestFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, c *config.Config)
		wantOK bool
	}{
		{"manifest with vsock", func(t *testing.T, c *config.Config) {
			c.Image.AssetsDir = write(t, []string{modlist.FeatureSerial, modlist.FeatureVsock})
		}, true},
		{"manifest without vsock", func(t *testing.T, c *config.Config) {
			c.Image.AssetsDir = write(t, []string{modlist.FeatureSerial})
		}, false},
		{"no manifest", func(t *testing.T, c *config.Config) { c.Image.AssetsDir = t.TempDir() }, false},
		{"kernel and initrd by path", func(t *testing.T, c *config.Config) {
			c.Image.AssetsDir = write(t, []string{modlist.FeatureVsock})
			c.Hypervisor.Kernel, c.Hypervisor.Initrd = "/k", "/i"
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Defaults()
			tc.setup(t, c)
			if err := imageVsock(c); (err == nil) != tc.wantOK {
				t.Errorf("imageVsock = %v, want ok %v", err, tc.wantOK)
			}
		})
	}
}

func TestConcurrentBoots(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cpus   int
		useKVM bool
		want   int
	}{
		{"TCG: one boot per CPU", 2, false, 2},
		{"KVM: four per CPU", 2, true, 8},
		{"never zero", 0, false, 1},
		{"capped", 4096, true, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := concurrentBoots(tc.cpus, tc.useKVM); got != tc.want {
				t.Errorf("concurrentBoots(%d, %v) = %d, want %d", tc.cpus, tc.useKVM, got, tc.want)
			}
		})
	}
	c := config.Defaults()
	c.Runtime.MaxConcurrentBoots = 3
	if g := BootGate(c); g.Slots != 3 || g.MaxWait != c.Runtime.BootWaitTimeout.Duration || g.Dir != "/run/hull/.boot-slots" {
		t.Errorf("configured gate %+v", g)
	}
	c.Runtime.MaxConcurrentBoots = 0
	c.Hypervisor.QEMU.Accel = "tcg"
	if n := MaxConcurrentBoots(c); n < 1 {
		t.Errorf("derived bound %d", n)
	}
}

// TestBootAssets: image.kind, or else the manifest's kind, picks the initrd
// or the root image; a kind the image cannot boot is an error.
func TestBootAssets(t *testing.T) {
	writeManifest := func(t *testing.T, m guestimage.Manifest) string {
		dir := t.TempDir()
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, guestimage.ManifestFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	initrdOnly := guestimage.Manifest{Format: "initrd", Kernel: guestimage.KernelInfo{File: "vmlinux-x"},
		Initrd: &guestimage.InitrdInfo{File: "initrd-x.img"}}
	old := initrdOnly
	old.Format = "initrd"
	withRoot := initrdOnly
	withRoot.Format, withRoot.Kind = "erofs", guestimage.KindRootfs
	withRoot.Rootfs = &guestimage.RootfsInfo{File: "rootfs-x.erofs", FSType: "erofs", Size: 4 << 20}
	for _, tc := range []struct {
		name, kind, machine string
		m                   guestimage.Manifest
		wantInitrd          string // base name
		wantRoot            string // base name
		wantErr             error
	}{
		{"manifest without kind boots its initrd", "", "", old, "initrd-x.img", "", nil},
		{"manifest kind rootfs", "", "", withRoot, "", "rootfs-x.erofs", nil},
		{"image.kind initrd over a rootfs image", "initrd", "", withRoot, "initrd-x.img", "", nil},
		{"image.kind rootfs without a root image", "rootfs", "", initrdOnly, "", "", errdefs.ErrFailedPrecondition},
		{"manifest kind rootfs on microvm boots the initrd", "", "microvm", withRoot, "initrd-x.img", "", nil},
		{"image.kind rootfs on microvm", "rootfs", "microvm", withRoot, "", "", errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Defaults()
			c.Image.AssetsDir = writeManifest(t, tc.m)
			c.Image.Kind = tc.kind
			if tc.machine != "" {
				c.Hypervisor.QEMU.Machine = tc.machine
			}
			b, err := BootAssets(c, false)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Kernel != filepath.Join(c.Image.AssetsDir, "vmlinux-x") {
				t.Errorf("kernel %s", b.Kernel)
			}
			if tc.wantInitrd != "" && b.Initrd != filepath.Join(c.Image.AssetsDir, tc.wantInitrd) || tc.wantInitrd == "" && b.Initrd != "" {
				t.Errorf("initrd %q, want %q", b.Initrd, tc.wantInitrd)
			}
			switch {
			case tc.wantRoot == "" && b.Root != nil:
				t.Errorf("root image %+v, want none", b.Root)
			case tc.wantRoot != "" && (b.Root == nil || *b.Root != hypervisor.RootImage{Path: filepath.Join(c.Image.AssetsDir, tc.wantRoot), Size: 4 << 20, FSType: "erofs"}):
				t.Errorf("root image %+v, want %s", b.Root, tc.wantRoot)
			}
			sc, err := SandboxConfig(c, "sb1")
			if err != nil {
				t.Fatal(err)
			}
			if sc.VM.RootImage != b.Root && (sc.VM.RootImage == nil || b.Root == nil || *sc.VM.RootImage != *b.Root) || sc.VM.Initrd != b.Initrd {
				t.Errorf("sandbox config boots initrd %q, root %+v; want %q, %+v", sc.VM.Initrd, sc.VM.RootImage, b.Initrd, b.Root)
			}
		})
	}
}
