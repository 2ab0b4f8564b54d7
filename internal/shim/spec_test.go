package shim

import (
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/internal/sandbox"
)

func TestContainerRole(t *testing.T) {
	for _, tc := range []struct {
		ann  map[string]string
		want role
		bad  bool
	}{
		{ann: nil, want: roleSingle},
		{ann: map[string]string{"io.kubernetes.cri.container-type": "sandbox"}, want: rolePodSandbox},
		{ann: map[string]string{"io.kubernetes.cri.container-type": "container"}, want: rolePodMember},
		{ann: map[string]string{"io.kubernetes.cri-o.ContainerType": "sandbox"}, want: rolePodSandbox},
		{ann: map[string]string{"io.kubernetes.cri-o.ContainerType": "container"}, want: rolePodMember},
		{ann: map[string]string{"io.kubernetes.cri.container-type": "pause"}, bad: true},
	} {
		got, err := containerRole(tc.ann)
		if tc.bad {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%v: got %v, %v; want an invalid argument", tc.ann, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%v: got %v, %v; want %v", tc.ann, got, err, tc.want)
		}
	}
}

// criSandboxSpec is the shape of containerd CRI's pause container spec.
func criSandboxSpec() *specs.Spec {
	return &specs.Spec{
		Hostname: "pod1",
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
			{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		}},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/sandboxes/p1/shm", Options: []string{"rbind", "ro"}},
		},
	}
}

// criMemberSpec is the shape of a CRI workload container's spec joining a
// sandbox whose init has PID 7.
func criMemberSpec() *specs.Spec {
	return &specs.Spec{
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.MountNamespace},
			{Type: specs.NetworkNamespace, Path: "/proc/7/ns/net"},
			{Type: specs.IPCNamespace, Path: "/proc/7/ns/ipc"},
			{Type: specs.UTSNamespace, Path: "/proc/7/ns/uts"},
			{Type: specs.PIDNamespace},
		}},
		Mounts: []specs.Mount{
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/sandboxes/p1/hosts", Options: []string{"rbind", "rw"}},
			{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/sandboxes/p1/shm", Options: []string{"rbind", "rw"}},
		},
	}
}

func TestPodSpecSandbox(t *testing.T) {
	s := criSandboxSpec()
	plan, err := podSpec(s, rolePodSandbox, func(uint32) (uint32, bool) { return 0, false }, "")
	if err != nil {
		t.Fatal(err)
	}
	if plan.netns != "/var/run/netns/cni-1" || plan.shmSource != "/run/containerd/sandboxes/p1/shm" {
		t.Errorf("plan %+v", plan)
	}
	if !reflect.DeepEqual(plan.guestMounts, []int{1}) || s.Mounts[1].Source != sandbox.GuestShmDir {
		t.Errorf("shm mount not moved to the guest: %+v, %+v", plan.guestMounts, s.Mounts[1])
	}
	want := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}
	if !reflect.DeepEqual(s.Linux.Namespaces, want) {
		t.Errorf("namespaces %+v, want %+v", s.Linux.Namespaces, want)
	}
}

func TestPodSpecMember(t *testing.T) {
	s := criMemberSpec()
	// 7 is the VMM's PID, reported for the sandbox container; 3 is that
	// container's init in the guest.
	plan, err := podSpec(s, rolePodMember, vmmIs7, "/run/containerd/sandboxes/p1/shm")
	if err != nil {
		t.Fatal(err)
	}
	if plan.netns != "" || plan.shmSource != "" {
		t.Errorf("a member asks for pod resources: %+v", plan)
	}
	if !reflect.DeepEqual(plan.guestMounts, []int{1}) || s.Mounts[1].Source != sandbox.GuestShmDir || s.Mounts[0].Source != "/var/lib/containerd/sandboxes/p1/hosts" {
		t.Errorf("mounts %+v, guest %v", s.Mounts, plan.guestMounts)
	}
	want := []specs.LinuxNamespace{
		{Type: specs.MountNamespace},
		{Type: specs.IPCNamespace, Path: "/proc/3/ns/ipc"},
		{Type: specs.UTSNamespace, Path: "/proc/3/ns/uts"},
		{Type: specs.PIDNamespace},
	}
	if !reflect.DeepEqual(s.Linux.Namespaces, want) {
		t.Errorf("namespaces %+v, want %+v", s.Linux.Namespaces, want)
	}
}

// vmmIs7 maps the VMM's PID 7 to the sandbox container's guest PID 3.
func vmmIs7(pid uint32) (uint32, bool) {
	if pid == 7 {
		return 3, true
	}
	return 0, false
}

func TestPodSpecRefusals(t *testing.T) {
	known := vmmIs7
	for name, tc := range map[string]struct {
		spec *specs.Spec
		role role
	}{
		"member joins an unknown pid": {
			role: rolePodMember,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/8/ns/ipc"}}}},
		},
		"member joins a host path": {
			role: rolePodMember,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UTSNamespace, Path: "/var/run/uts/x"}}}},
		},
		"member names the sandbox container's guest pid": {
			role: rolePodMember,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/3/ns/ipc"}}}},
		},
		"member path with a trailing part": {
			role: rolePodMember,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/7/ns/ipc/x"}}}},
		},
		"member path through dot-dot": {
			role: rolePodMember,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/7/../8/ns/ipc"}}}},
		},
		"member path of another kind": {
			role: rolePodMember,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/7/ns/uts"}}}},
		},
		"single container joins a host namespace": {
			role: roleSingle,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}}}},
		},
	} {
		if _, err := podSpec(tc.spec, tc.role, known, ""); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: got %v, want an invalid argument", name, err)
		}
	}
}

func TestPodSpecSandboxWithoutNetnsPath(t *testing.T) {
	for name, ns := range map[string][]specs.LinuxNamespace{
		"user namespace":         {{Type: specs.UserNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"}},
		"network without a path": {{Type: specs.NetworkNamespace}},
	} {
		s := &specs.Spec{Linux: &specs.Linux{Namespaces: ns}}
		if _, err := podSpec(s, rolePodSandbox, func(uint32) (uint32, bool) { return 0, false }, ""); !errdefs.IsNotImplemented(err) {
			t.Errorf("%s: got %v, want not implemented", name, err)
		}
	}
}

func TestPodSpecSingle(t *testing.T) {
	// ctr run: a new network namespace stays (isolated, as under runc);
	// a host /dev/shm bind stays a shared bind.
	s := &specs.Spec{
		Linux:  &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}, {Type: specs.PIDNamespace}}},
		Mounts: []specs.Mount{{Destination: "/dev/shm", Type: "tmpfs", Source: "shm"}},
	}
	plan, err := podSpec(s, roleSingle, func(uint32) (uint32, bool) { return 0, false }, "")
	if err != nil {
		t.Fatal(err)
	}
	if plan.netns != "" || len(plan.guestMounts) != 0 || len(s.Linux.Namespaces) != 2 || s.Mounts[0].Source != "shm" {
		t.Errorf("plan %+v, spec %+v", plan, s)
	}
}

func TestPodSize(t *testing.T) {
	base := vmSize{vcpus: 1, memoryMiB: 512}
	limit := vmSize{vcpus: 4, memoryMiB: 4096}
	for _, tc := range []struct {
		ann  map[string]string
		want vmSize
		bad  bool
	}{
		{ann: nil, want: base},
		{ann: map[string]string{annotationSandboxCPUQuota: "150000", annotationSandboxCPUPeriod: "100000", annotationSandboxMemory: "268435456"}, want: vmSize{3, 768}},
		{ann: map[string]string{annotationSandboxCPUQuota: "-1", annotationSandboxCPUPeriod: "100000"}, want: base},
		{ann: map[string]string{annotationSandboxCPUQuota: "0", annotationSandboxMemory: "0"}, want: base},
		// Exactly at the cap is allowed; beyond it in either resource is
		// refused, never capped.
		{ann: map[string]string{annotationSandboxCPUQuota: "300000", annotationSandboxCPUPeriod: "100000", annotationSandboxMemory: "3758096384"}, want: limit},
		{ann: map[string]string{annotationSandboxCPUQuota: "1000000", annotationSandboxCPUPeriod: "100000", annotationSandboxMemory: "68719476736"}, bad: true},
		{ann: map[string]string{annotationSandboxCPUQuota: "400000", annotationSandboxCPUPeriod: "100000"}, bad: true},
		{ann: map[string]string{annotationSandboxMemory: "3759144960"}, bad: true},
		{ann: map[string]string{annotationSandboxMemory: "1"}, want: vmSize{1, 513}},
		{ann: map[string]string{annotationSandboxMemory: "lots"}, bad: true},
		{ann: map[string]string{annotationSandboxMemory: "-5"}, bad: true},
	} {
		got, static, err := podSize(base, limit, tc.ann)
		if tc.bad {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%v: got %v, %v; want an invalid argument", tc.ann, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%v: got %+v, %v; want %+v", tc.ann, got, err, tc.want)
		}
		if static != (got != base) {
			t.Errorf("%v: static %v for size %+v", tc.ann, static, got)
		}
	}
}

func TestContainerGrowth(t *testing.T) {
	quota, period, mem := int64(250000), uint64(100000), int64(100<<20+1)
	s := &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &mem},
	}}}
	if g := containerGrowth(s); g != (vmSize{3, 101}) {
		t.Errorf("growth %+v, want 3 vCPUs and 101 MiB", g)
	}
	if g := containerGrowth(&specs.Spec{}); g != (vmSize{}) {
		t.Errorf("growth without limits %+v", g)
	}
	if got, err := fitSize(vmSize{1, 512}, vmSize{3, 101}, vmSize{2, 4096}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("4 vCPUs with a cap of 2: got %+v, %v; want an invalid argument", got, err)
	} else if !strings.Contains(err.Error(), "hypervisor.max_vcpus") {
		t.Errorf("error %q does not name the key to change", err)
	}
	if got, err := fitSize(vmSize{1, 512}, vmSize{1, 101}, vmSize{2, 4096}); err != nil || got != (vmSize{2, 613}) {
		t.Errorf("within the cap: %+v, %v", got, err)
	}
}

func TestGrowthTarget(t *testing.T) {
	base, limit := vmSize{1, 512}, alignLimit(vmSize{1, 512}, vmSize{4, 1000})
	if limit != (vmSize{4, 896}) {
		t.Fatalf("aligned limit %+v, want 896 MiB (whole 128 MiB blocks)", limit)
	}
	a := vmSize{1, 256}
	// The first member grows the VM by its limits.
	cur, err := growthTarget(base, base, limit, map[string]vmSize{"a": a})
	if err != nil || cur != (vmSize{2, 768}) {
		t.Errorf("after a: %+v, %v", cur, err)
	}
	// Restarted under a new ID, the old one deleted: no more growth.
	if got, err := growthTarget(base, cur, limit, map[string]vmSize{"a2": a}); err != nil || got != cur {
		t.Errorf("restart grew the VM: %+v, %v", got, err)
	}
	// Deleted members do not shrink it.
	if got, err := growthTarget(base, cur, limit, map[string]vmSize{}); err != nil || got != cur {
		t.Errorf("shrunk: %+v, %v", got, err)
	}
	// A member that would take the VM beyond the cap is refused.
	if got, err := growthTarget(base, cur, limit, map[string]vmSize{"a": a, "b": a, "c": a, "d": a}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("four members: %+v, %v; want an invalid argument", got, err)
	}
	if got, err := growthTarget(base, cur, limit, map[string]vmSize{"a": a, "b": {0, 129}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("memory beyond the aligned cap: %+v, %v; want an invalid argument", got, err)
	}
	if n := cpusOf(1<<62, 1); n != 255 {
		t.Errorf("huge quota: %d vCPUs", n)
	}
}
