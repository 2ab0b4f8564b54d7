package launch

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
)

// TestTemplateKeySerialPorts checks that template keys name the agent's
// virtio-serial port count: a state saved with another count does not load.
func TestTemplateKeySerialPorts(t *testing.T) {
	c := config.Defaults()
	key := TemplateConfig(c, QEMUOptions(c)).DriverKey
	if want := fmt.Sprintf(" agent-serial-ports=%d", qemu.AgentSerialPorts); !strings.Contains(key, want) {
		t.Errorf("template driver key %q does not hold %q", key, want)
	}
}
