package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestApplyPodNetSysctls(t *testing.T) {
	procSys := t.TempDir()
	start := filepath.Join(procSys, "net", "ipv4", "ip_unprivileged_port_start")
	if err := os.MkdirAll(filepath.Dir(start), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(start, []byte("1024"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := func(ns ...specs.LinuxNamespace) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{
			Namespaces: ns,
			Sysctl:     map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.msgmax": "8192"},
		}}
	}

	// A container with a network namespace of its own keeps its sysctls:
	// libcontainer sets them in that namespace.
	own := spec(specs.LinuxNamespace{Type: specs.NetworkNamespace})
	if err := applyPodNetSysctls(context.Background(), procSys, own); err != nil {
		t.Fatal(err)
	}
	if len(own.Linux.Sysctl) != 2 {
		t.Errorf("sysctls of a container with its own netns changed: %v", own.Linux.Sysctl)
	}
	if b, _ := os.ReadFile(start); string(b) != "1024" {
		t.Errorf("guest sysctl written for a container with its own netns: %q", b)
	}

	// A pod container: net.* goes to the guest, the rest stays.
	pod := spec(specs.LinuxNamespace{Type: specs.IPCNamespace})
	if err := applyPodNetSysctls(context.Background(), procSys, pod); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(start); string(b) != "0" {
		t.Errorf("guest sysctl = %q, want 0", b)
	}
	if _, ok := pod.Linux.Sysctl["net.ipv4.ip_unprivileged_port_start"]; ok || pod.Linux.Sysctl["kernel.msgmax"] != "8192" {
		t.Errorf("spec sysctls after: %v", pod.Linux.Sysctl)
	}

	for _, bad := range []string{"net..x", "net.nonexistent.key", "net./etc"} {
		s := &specs.Spec{Linux: &specs.Linux{Sysctl: map[string]string{bad: "1"}}}
		if err := applyPodNetSysctls(context.Background(), procSys, s); !errdefs.IsInvalidArgument(err) {
			t.Errorf("sysctl %q: got %v, want an invalid argument", bad, err)
		}
	}
}
