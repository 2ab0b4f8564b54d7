package launch

import (
	"testing"

	"github.com/hull-runtime/hull/internal/config"
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
