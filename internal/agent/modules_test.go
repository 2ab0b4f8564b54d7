package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hull-runtime/hull/internal/modlist"
)

func mod(name string, features ...string) modlist.Module {
	return modlist.Module{Name: name, Path: "/lib/modules/x/" + name + ".ko", Features: features}
}

var testModules = []modlist.Module{
	mod("virtio_ring", "bus-pci", "bus-mmio", "serial", "vsock", "net"),
	mod("virtio", "bus-pci", "bus-mmio", "serial", "vsock", "net"),
	mod("virtio_pci_modern_dev", "bus-pci"),
	mod("virtio_pci", "bus-pci"),
	mod("virtio_mmio", "bus-mmio"),
	mod("virtio_console", "serial"),
	mod("vsock", "vsock"),
	mod("vmw_vsock_virtio_transport", "vsock"),
	mod("failover", "net"),
	mod("virtio_net", "net"),
	mod("overlay", "overlay"),
}

func names(mods []modlist.Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestSplitModules(t *testing.T) {
	for _, tc := range []struct {
		name, transport, bus string
		first, rest          []string
	}{
		{
			name: "serial on pci", transport: "serial", bus: "bus-pci",
			first: []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "virtio_console"},
			rest:  []string{"vsock", "vmw_vsock_virtio_transport", "failover", "virtio_net", "overlay"},
		},
		{
			name: "vsock on mmio", transport: "vsock", bus: "bus-mmio",
			first: []string{"virtio_ring", "virtio", "virtio_mmio", "vsock", "vmw_vsock_virtio_transport"},
			rest:  []string{"virtio_console", "failover", "virtio_net", "overlay"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, rest := splitModules(testModules, tc.transport, tc.bus)
			if got := names(first); !slices.Equal(got, tc.first) {
				t.Errorf("first = %q, want %q", got, tc.first)
			}
			if got := names(rest); !slices.Equal(got, tc.rest) {
				t.Errorf("rest = %q, want %q", got, tc.rest)
			}
		})
	}
}

func TestLoadModulesAndFeatures(t *testing.T) {
	failing := map[string]bool{"virtio_net": true}
	var order []string
	r := loadModules(context.Background(), testModules, func(_ context.Context, m modlist.Module) error {
		order = append(order, m.Name)
		if failing[m.Name] {
			return errors.New("boom")
		}
		return nil
	})
	if !slices.Equal(order, names(testModules)) {
		t.Fatalf("load order %q", order)
	}
	if len(r.failed) != 1 || r.failed["virtio_net"] == nil {
		t.Fatalf("failed = %v", r.failed)
	}
	got := features(&modlist.List{Modules: testModules}, r.loaded)
	want := []string{"bus-mmio", "bus-pci", "overlay", "serial", "vsock"}
	if !slices.Equal(got, want) {
		t.Fatalf("features = %q, want %q", got, want)
	}
	// A feature the kernel has built in is there whatever its modules did.
	got = features(&modlist.List{Builtin: []string{"net", "block"}, Modules: testModules}, r.loaded)
	want = []string{"block", "bus-mmio", "bus-pci", "net", "overlay", "serial", "vsock"}
	if !slices.Equal(got, want) {
		t.Fatalf("features with built-ins = %q, want %q", got, want)
	}
}

func TestDetectBus(t *testing.T) {
	for _, tc := range []struct {
		name    string
		devices []string
		mkdir   bool
		want    string
	}{
		{"no pci", nil, false, modlist.FeatureBusMMIO},
		{"empty pci", nil, true, modlist.FeatureBusMMIO},
		{"pci devices", []string{"0000:00:00.0"}, true, modlist.FeatureBusPCI},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := t.TempDir()
			if tc.mkdir {
				if err := os.MkdirAll(filepath.Join(sys, "bus/pci/devices"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for _, d := range tc.devices {
				if err := os.WriteFile(filepath.Join(sys, "bus/pci/devices", d), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := detectBus(sys); got != tc.want {
				t.Fatalf("detectBus = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestSplitStorageModules(t *testing.T) {
	mods := []modlist.Module{
		{Name: "fuse", Features: []string{modlist.FeatureVirtioFS}},
		{Name: "virtio_ring", Features: []string{modlist.FeatureVirtioFS, modlist.FeatureNet}},
		{Name: "failover", Features: []string{modlist.FeatureNet}},
		{Name: "virtiofs", Features: []string{modlist.FeatureVirtioFS}},
		{Name: "overlay", Features: []string{modlist.FeatureOverlay}},
		{Name: "virtio_net", Features: []string{modlist.FeatureNet}},
	}
	storage, rest := splitStorageModules(mods)
	names := func(ms []modlist.Module) (out []string) {
		for _, m := range ms {
			out = append(out, m.Name)
		}
		return out
	}
	if got, want := names(storage), []string{"fuse", "virtio_ring", "virtiofs", "overlay"}; !slices.Equal(got, want) {
		t.Errorf("storage modules %v, want %v", got, want)
	}
	if got, want := names(rest), []string{"failover", "virtio_net"}; !slices.Equal(got, want) {
		t.Errorf("other modules %v, want %v", got, want)
	}
}
