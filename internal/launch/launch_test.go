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
