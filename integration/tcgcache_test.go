package integration

import (
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/guestimage"
)

// TestTCGCacheHeadroom boots one VM of the default image under TCG with
// the default translation cache and checks that the boot leaves the cache
// not full: the default (qemu.DefaultTCGCacheMiB) is sized a few MiB above
// what a boot translates, and a guest kernel or agent whose boot filled it
// would have the boot empty it and a pod's second container start
// translate its code again (about 3 times the CPU time; docs/benchmarks.md). The same check as
// BenchmarkIdleMemory's, for one VM, so that a change that makes the boot
// translate more fails here and not only in make bench.
func TestTCGCacheHeadroom(t *testing.T) {
	dir, _ := rootfsAssets(t)
	c := imageBenchConfig(t, imageKind{"hull-rootfs", dir, guestimage.KindRootfs})
	c.Hypervisor.QEMU.Accel = "tcg"
	sbs, err := startSandboxes(c, "tcgroom", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer stopSandboxes(sbs)
	time.Sleep(idleSettle)
	used := mib(sandboxPSS(c).tcg)
	size := float64(tcgCacheSize(c))
	t.Logf("translation cache after the boot: %.1f of %.0f MiB", used, size)
	if used == 0 {
		t.Fatal("no translation cache found in QEMU's mappings")
	}
	if used >= size-1 {
		t.Errorf("a boot fills the TCG translation cache: %.1f MiB of %.0f MiB", used, size)
	}
}
