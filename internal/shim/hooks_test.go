package shim

import (
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/internal/ocispec"
)

func TestHostHooks(t *testing.T) {
	cni := ocispec.HostHooks{CreateRuntime: []specs.Hook{{Path: "/usr/local/bin/nerdctl"}}}
	newNet := func() *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.MountNamespace},
		}}}
	}
	for _, tc := range []struct {
		name    string
		role    role
		hooks   ocispec.HostHooks
		spec    *specs.Spec
		refused bool
		own     bool
		left    int
	}{
		{name: "single container with a hook owns the vmm's namespace", role: roleSingle, hooks: cni, spec: newNet(), own: true, left: 2},
		{name: "no hook keeps an isolated namespace", role: roleSingle, spec: newNet(), left: 3},
		{name: "a namespace by path is not the vmm's", role: roleSingle, hooks: cni, left: 1,
			spec: &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"}}}}},
		{name: "pod sandbox refused", role: rolePodSandbox, hooks: cni, spec: newNet(), refused: true},
		{name: "pod member refused", role: rolePodMember, hooks: ocispec.HostHooks{Poststop: cni.CreateRuntime}, spec: newNet(), refused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkHostHooks("c", tc.role, tc.hooks)
			if tc.refused {
				if !errdefs.IsNotImplemented(err) {
					t.Fatalf("checkHostHooks: %v, want a not-implemented error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ownNetwork(tc.spec, tc.role, tc.hooks); got != tc.own {
				t.Errorf("ownNetwork: %v, want %v", got, tc.own)
			}
			if n := len(tc.spec.Linux.Namespaces); n != tc.left {
				t.Errorf("%d namespaces left, want %d: %+v", n, tc.left, tc.spec.Linux.Namespaces)
			}
		})
	}
}

func TestCheckHookNetwork(t *testing.T) {
	cni := ocispec.HostHooks{CreateRuntime: []specs.Hook{{Path: "/usr/local/bin/nerdctl"}}}
	for _, tc := range []struct {
		name    string
		hooks   ocispec.HostHooks
		plan    guestPlan
		refused bool
	}{
		{"hooks and a namespace by path", cni, guestPlan{netns: "/var/run/netns/x"}, true},
		{"hooks, no namespace by path", cni, guestPlan{}, false},
		{"a namespace by path, no hooks", ocispec.HostHooks{}, guestPlan{netns: "/var/run/netns/x"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkHookNetwork("c", tc.hooks, tc.plan)
			if tc.refused != errdefs.IsNotImplemented(err) || (!tc.refused && err != nil) {
				t.Errorf("checkHookNetwork: %v, want refused %v", err, tc.refused)
			}
		})
	}
}
