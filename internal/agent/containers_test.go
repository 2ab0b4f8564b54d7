package agent

import (
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

func TestWaitStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		ws   unix.WaitStatus
		want int32
	}{
		{"exit 0", 0, 0},
		{"exit 3", 3 << 8, 3},
		{"exit 255", 255 << 8, 255},
		{"SIGTERM", unix.WaitStatus(unix.SIGTERM), 143},
		{"SIGKILL", unix.WaitStatus(unix.SIGKILL), 137},
		{"SIGKILL with core flag", unix.WaitStatus(unix.SIGSEGV) | 0x80, 139},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := waitStatus(tc.ws); got != tc.want {
				t.Errorf("waitStatus(%#x) = %d, want %d", uint32(tc.ws), got, tc.want)
			}
		})
	}
}

func TestCheckMountPoint(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/run/hull/shared", true},
		{"/run/hull/shared/c1/volumes/0-data", true},
		{"/run/hull", false},
		{"/run/hullx/a", false},
		{"run/hull/a", false},
		{"/run/hull/../etc", false},
		{"/run/hull/a/", false},
		{"/run/hull//a", false},
		{"/etc", false},
		{"", false},
	} {
		t.Run(tc.path, func(t *testing.T) {
			err := checkMountPoint(storageRoot, tc.path)
			if tc.ok != (err == nil) || (err != nil && !errdefs.IsInvalidArgument(err)) {
				t.Errorf("checkMountPoint(%q) = %v", tc.path, err)
			}
		})
	}
}

func TestCheckStorage(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    *api.Storage
		ok   bool
	}{
		{"virtiofs", &api.Storage{Source: "hull", Fstype: "virtiofs", MountPoint: "/run/hull/shared"}, true},
		{"device", &api.Storage{Source: "/dev/vdb", Fstype: "ext4", Options: []string{"ro"}, MountPoint: "/run/hull/b"}, true},
		{"host path", &api.Storage{Source: "/etc", Fstype: "ext4", MountPoint: "/run/hull/b"}, false},
		{"dotdot source", &api.Storage{Source: "/dev/../etc", Fstype: "ext4", MountPoint: "/run/hull/b"}, false},
		{"bind", &api.Storage{Source: "x", Fstype: "bind", MountPoint: "/run/hull/b"}, false},
		{"no type", &api.Storage{Source: "x", MountPoint: "/run/hull/b"}, false},
		{"comma option", &api.Storage{Source: "x", Fstype: "tmpfs", Options: []string{"size=1,mode=0"}, MountPoint: "/run/hull/b"}, false},
		{"outside", &api.Storage{Source: "hull", Fstype: "virtiofs", MountPoint: "/mnt"}, false},
		{"disk by serial", &api.Storage{BlockSerial: "hullroot1", Fstype: "ext4", MountPoint: "/run/hull/blockroot/c/rootfs"}, true},
		{"disk serial and source", &api.Storage{BlockSerial: "hullroot1", Source: "/dev/vda", Fstype: "ext4", MountPoint: "/run/hull/b"}, false},
		{"disk serial with a slash", &api.Storage{BlockSerial: "../vda", Fstype: "ext4", MountPoint: "/run/hull/b"}, false},
		{"disk serial too long", &api.Storage{BlockSerial: "abcdefghijklmnopqrstu", Fstype: "ext4", MountPoint: "/run/hull/b"}, false},
		{"disk without type", &api.Storage{BlockSerial: "hullroot1", MountPoint: "/run/hull/b"}, false},
		{"erofs overlay", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/blockroot/c/rootfs",
			Options: []string{"lowerdir=/run/hull/erofs/c/layer0:/run/hull/erofs/c/layer1", "upperdir=/run/hull/erofs/c/rw/upper", "workdir=/run/hull/erofs/c/rw/work", "index=off"}}, true},
		{"read-only overlay", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"lowerdir=/run/hull/l0:/run/hull/l1"}}, true},
		{"overlay without lowerdir", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"upperdir=/run/hull/u", "workdir=/run/hull/w"}}, false},
		{"overlay lower outside /run/hull", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"lowerdir=/run/hull/l0:/etc"}}, false},
		{"overlay upper outside /run/hull", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"lowerdir=/run/hull/l0:/run/hull/l1", "upperdir=/tmp/u", "workdir=/run/hull/w"}}, false},
		{"overlay work unclean", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"lowerdir=/run/hull/l0:/run/hull/l1", "upperdir=/run/hull/u", "workdir=/run/hull/../w"}}, false},
		{"overlay lowerdir+ outside /run/hull", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"lowerdir=/run/hull/l0:/run/hull/l1", "lowerdir+=/etc"}}, false},
		{"overlay datadir+ relative", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"lowerdir=/run/hull/l0:/run/hull/l1", "datadir+=etc"}}, false},
		{"overlay empty lower", &api.Storage{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/b",
			Options: []string{"lowerdir=/run/hull/l0:"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkStorage(storageRoot, tc.s); tc.ok != (err == nil) {
				t.Errorf("checkStorage = %v", err)
			}
		})
	}
}

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		name, spec, want string
		pod              bool
	}{
		{"empty", ``, "empty spec", false},
		{"not json", `{`, "decoding spec", false},
		{"no root", `{"process":{"args":["sh"],"cwd":"/"}}`, "no root.path", false},
		{"relative root", `{"root":{"path":"rootfs"},"process":{"args":["sh"],"cwd":"/"}}`, "not absolute", false},
		{"no process", `{"root":{"path":"/r"}}`, "no process", false},
		{"no args", `{"root":{"path":"/r"},"process":{"cwd":"/"}}`, "no args", false},
		{"relative cwd", `{"root":{"path":"/r"},"process":{"args":["sh"],"cwd":"tmp"}}`, "cwd", false},
		{"host hook", `{"root":{"path":"/r"},"process":{"args":["sh"],"cwd":"/"},"hooks":{"poststop":[{"path":"/x"}]}}`, "hooks", false},
		{"pod sandbox with a root", `{"root":{"path":"/r"},"process":{"args":["/pause"],"cwd":"/"}}`, "gets none", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSpec("c1", []byte(tc.spec), tc.pod)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseSpec: %v, want %q", err, tc.want)
			}
			if tc.name != "host hook" && !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v is not invalid argument", err)
			}
		})
	}
	// A pod sandbox's has no root.
	if _, err := parseSpec("c1", []byte(`{"process":{"args":["/pause"],"cwd":"/"}}`), true); err != nil {
		t.Errorf("pod sandbox without a root: %v", err)
	}
	s, err := parseSpec("c1", []byte(`{"root":{"path":"/r"},"process":{"args":["sh"],"cwd":"/"}}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux.CgroupsPath != "/hull/c1" {
		t.Errorf("cgroups path %q", s.Linux.CgroupsPath)
	}
	if n := s.Linux.Namespaces; len(n) != 1 || n[0].Type != specs.CgroupNamespace || n[0].Path != "" {
		t.Errorf("namespaces %+v, want a new cgroup namespace", n)
	}
	// A cgroup namespace the spec names is kept, not doubled.
	s, err = parseSpec("c1", []byte(`{"root":{"path":"/r"},"process":{"args":["sh"],"cwd":"/"},"linux":{"namespaces":[{"type":"cgroup","path":"/proc/1/ns/cgroup"}]}}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Linux.Namespaces; len(n) != 1 || n[0].Path != "/proc/1/ns/cgroup" {
		t.Errorf("namespaces %+v, want the spec's cgroup namespace alone", n)
	}
}

func TestCheckID(t *testing.T) {
	for id, ok := range map[string]bool{"c1": true, "a.b-c_d+e": true, "": false, "..": false, "a/b": false, "a b": false} {
		if err := checkID("container", id); ok != (err == nil) {
			t.Errorf("checkID(%q) = %v", id, err)
		}
	}
}

func TestStatsResponse(t *testing.T) {
	cs := cgroups.NewStats()
	cs.CpuStats.CpuUsage = cgroups.CpuUsage{TotalUsage: 5_000_000, UsageInUsermode: 3_000_000, UsageInKernelmode: 2_000_000}
	cs.CpuStats.ThrottlingData = cgroups.ThrottlingData{Periods: 10, ThrottledPeriods: 2, ThrottledTime: 7_000}
	cs.MemoryStats.Usage = cgroups.MemoryData{Usage: 1 << 20, Limit: math.MaxUint64}
	cs.MemoryStats.SwapOnlyUsage = cgroups.MemoryData{Usage: 4096}
	cs.MemoryStats.Stats = map[string]uint64{"anon": 1, "file": 2, "kernel_stack": 3, "slab": 4, "sock": 5, "shmem": 6}
	cs.PidsStats = cgroups.PidsStats{Current: 3, Limit: 100}
	cs.BlkioStats.IoServiceBytesRecursive = []cgroups.BlkioStatEntry{
		{Major: 254, Minor: 0, Op: "Read", Value: 100}, {Major: 254, Minor: 0, Op: "Write", Value: 200},
		{Major: 8, Minor: 1, Op: "Write", Value: 9},
	}
	cs.BlkioStats.IoServicedRecursive = []cgroups.BlkioStatEntry{
		{Major: 254, Minor: 0, Op: "Read", Value: 1}, {Major: 254, Minor: 0, Op: "Write", Value: 2},
	}
	events := parseKeyValues([]byte("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"))
	got := statsResponse(cs, events)
	want := &api.StatsResponse{
		Cpu: &api.CPUStats{UsageUsec: 5000, UserUsec: 3000, SystemUsec: 2000, NrPeriods: 10, NrThrottled: 2, ThrottledUsec: 7},
		Memory: &api.MemoryStats{Usage: 1 << 20, Limit: math.MaxUint64, Anon: 1, File: 2, KernelStack: 3, Slab: 4, Sock: 5, Shmem: 6,
			SwapUsage: 4096, MaxEvents: 12, OomEvents: 2, OomKillEvents: 1},
		Pids: &api.PidsStats{Current: 3, Limit: 100},
		Io: []*api.IOStats{
			{Major: 254, Minor: 0, Rbytes: 100, Wbytes: 200, Rios: 1, Wios: 2},
			{Major: 8, Minor: 1, Wbytes: 9},
		},
	}
	if !proto.Equal(got, want) {
		t.Errorf("statsResponse:\n got %v\nwant %v", got, want)
	}
	if !reflect.DeepEqual(statsResponse(nil, nil), &api.StatsResponse{}) {
		t.Error("nil stats")
	}
}
