package launch

import (
	"testing"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
)

// TestFirmware checks that the configured firmware reaches the QEMU driver
// and that it leaves template keys alone: templates and their clones run
// SeaBIOS whatever it says, so a template serves either setting.
func TestFirmware(t *testing.T) {
	c := config.Defaults()
	if got := QEMUOptions(c).Firmware; got != qemu.FirmwareQboot {
		t.Errorf("default firmware %q, want %q", got, qemu.FirmwareQboot)
	}
	qboot := TemplateConfig(c, QEMUOptions(c)).DriverKey
	c.Hypervisor.QEMU.Firmware = "seabios"
	if got := QEMUOptions(c).Firmware; got != qemu.FirmwareSeaBIOS {
		t.Errorf("firmware %q, want %q", got, qemu.FirmwareSeaBIOS)
	}
	if seabios := TemplateConfig(c, QEMUOptions(c)).DriverKey; seabios != qboot {
		t.Errorf("template driver keys %q and %q differ by the firmware, which templates do not use", qboot, seabios)
	}
}
