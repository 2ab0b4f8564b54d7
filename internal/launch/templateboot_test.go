package launch

import (
	"testing"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
)

// TestTemplateKeyDriverBoot checks that template keys hold how the QEMU
// driver boots a template (its firmware and kernel parameters,
// qemu.TemplateBoot) of the VM configuration being keyed, so that a driver
// that boots templates otherwise does not restore states saved by another.
func TestTemplateKeyDriverBoot(t *testing.T) {
	c := config.Defaults()
	opts := QEMUOptions(c)
	tc := TemplateConfig(c, opts)
	if tc.DriverBoot == nil {
		t.Fatal("no DriverBoot in the template configuration")
	}
	for _, vc := range []hypervisor.Config{{MemoryMiB: 512}, {MemoryMiB: 1024, Debug: true}} {
		if got, want := tc.DriverBoot(vc), qemu.TemplateBoot(opts, vc); got != want {
			t.Errorf("DriverBoot(%+v) = %q, want the driver's %q", vc, got, want)
		}
	}
}
