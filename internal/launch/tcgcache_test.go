package launch

import (
	"testing"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
)

// TestTCGCacheDefault checks that the configuration's default translation
// cache size is the QEMU driver's own default, which a configuration that
// leaves the setting at 0 gets: both must move together.
func TestTCGCacheDefault(t *testing.T) {
	if got := QEMUOptions(config.Defaults()).TCGCacheMiB; got != qemu.DefaultTCGCacheMiB {
		t.Errorf("default tcg_cache_mib %d MiB, driver default %d MiB", got, qemu.DefaultTCGCacheMiB)
	}
}
