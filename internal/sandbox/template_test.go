package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestTemplateKey(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := func() hypervisor.Config {
		return hypervisor.Config{Kernel: kernel, VCPUs: 1, MemoryMiB: 512, KernelParams: []string{"quiet"},
			Agent: hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: "agent.0"}}
	}
	tc := &TemplateConfig{Root: dir, DriverKey: "q35"}
	want, err := tc.Key(base())
	if err != nil {
		t.Fatal(err)
	}
	if !IsTemplateKey(want) {
		t.Fatalf("key %q is not a template key", want)
	}
	// Per-sandbox fields do not change the key.
	same := base()
	same.ID, same.StateDir, same.Cgroup = "other", "/run/x", "/hull/x"
	same.Filesystems = []hypervisor.FilesystemDevice{{Tag: "a", SocketPath: "/a"}}
	if got, _ := tc.Key(same); got != want {
		t.Error("per-sandbox fields changed the key")
	}
	for name, edit := range map[string]func(c *hypervisor.Config, tc *TemplateConfig){
		"vcpus":      func(c *hypervisor.Config, _ *TemplateConfig) { c.VCPUs = 2 },
		"memory":     func(c *hypervisor.Config, _ *TemplateConfig) { c.MemoryMiB = 1024 },
		"max memory": func(c *hypervisor.Config, _ *TemplateConfig) { c.MaxMemoryMiB = 4096 },
		"params":     func(c *hypervisor.Config, _ *TemplateConfig) { c.KernelParams = []string{"hull.debug_console=1"} },
		"nic slots":  func(c *hypervisor.Config, _ *TemplateConfig) { c.HotplugNICs = 1 },
		"port":       func(c *hypervisor.Config, _ *TemplateConfig) { c.Agent.PortName = "agent.1" },
		"driver":     func(_ *hypervisor.Config, tc *TemplateConfig) { tc.DriverKey = "microvm" },
		"driver boot": func(_ *hypervisor.Config, tc *TemplateConfig) {
			tc.DriverBoot = func(hypervisor.Config) string { return "bios=default append=quiet" }
		},
		"kernel file": func(_ *hypervisor.Config, _ *TemplateConfig) { _ = os.Chtimes(kernel, time.Now(), time.Unix(1, 0)) },
	} {
		c, tc2 := base(), *tc
		edit(&c, &tc2)
		if got, err := tc2.Key(c); err != nil || got == want {
			t.Errorf("%s: key %s (%v) unchanged", name, got, err)
		}
	}
	c := base()
	c.Kernel = filepath.Join(dir, "missing")
	if _, err := tc.Key(c); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("key of a missing kernel: %v", err)
	}
}

// TestTemplateKeyReplacedFile: a guest asset replaced by a file of the same
// size and modification time (cp -p, rsync -t, a package manager) gets a
// new key, or a clone would restore a guest of the old asset.
func TestTemplateKeyReplacedFile(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	vc := hypervisor.Config{Kernel: kernel, VCPUs: 1, MemoryMiB: 512,
		Agent: hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial}}
	tc := &TemplateConfig{Root: dir}
	before, err := tc.Key(vc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(kernel)
	if err != nil {
		t.Fatal(err)
	}
	tmp := kernel + ".new"
	if err := os.WriteFile(tmp, []byte("KERNEL"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, kernel); err != nil {
		t.Fatal(err)
	}
	after, err := tc.Key(vc)
	if err != nil {
		t.Fatal(err)
	}
	if after == before {
		t.Error("the key of a replaced kernel of the same size and mtime is unchanged")
	}
}

func TestTemplateFind(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	vc := hypervisor.Config{Kernel: kernel, VCPUs: 1, MemoryMiB: 512,
		Agent: hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial}}
	tc := &TemplateConfig{Root: dir, Memory: hypervisor.TemplateMemoryPrivate}
	ctx := context.Background()
	if got, err := tc.find(ctx, vc, true); got != nil || err != nil {
		t.Errorf("no template: %v, %v; want none and no error (the vm boots)", got, err)
	}
	key, _ := tc.Key(vc)
	if err := os.MkdirAll(filepath.Join(dir, key), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, key, "state"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := tc.find(ctx, vc, true)
	if err != nil || got == nil || got.Dir != filepath.Join(dir, key) || !got.Restore || got.Memory != hypervisor.TemplateMemoryPrivate {
		t.Errorf("template found as %+v, %v", got, err)
	}
	// A pod whose NICs are on the command line has devices its template
	// lacks: QEMU would refuse the state, or the guest never see them.
	withNICs := vc
	withNICs.Networks = []hypervisor.NetworkDevice{{ID: "eth0", TapName: "tap0", MAC: "02:00:00:00:00:01"}}
	if got, err := tc.find(ctx, withNICs, true); got != nil || err != nil {
		t.Errorf("vm with boot NICs: %v, %v; want none (it boots)", got, err)
	}
	vs := vc
	vs.Agent = hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 3, Port: 1024}
	if got, err := tc.find(ctx, vs, true); got != nil || err != nil {
		t.Errorf("vsock vm: %v, %v; want none (it boots)", got, err)
	}
	shared := &TemplateConfig{Root: dir, Memory: hypervisor.TemplateMemoryShared}
	if _, err := shared.find(ctx, vc, true); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("shared memory for a sandbox with virtio-fs: %v, want not implemented", err)
	}
	if got, err := shared.find(ctx, vc, false); err != nil || got == nil || got.Memory != hypervisor.TemplateMemoryShared {
		t.Errorf("shared memory for a sandbox without virtio-fs: %v, %v; want the template, shared", got, err)
	}
}
