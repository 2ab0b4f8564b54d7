package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// benchTemplateVMs is how many VMs of each kind BenchmarkTemplate runs at
// once for the memory figures.
const benchTemplateVMs = 4

// BenchmarkTemplate compares, on the hull kernel (q35, serial agent),
// starting a VM by booting it ("cold") with restoring it from a template
// whose RAM each clone copies ("private") or maps copy-on-write ("shared"):
// QEMU start to the agent's first answer (median wall time, runs of the
// three kinds alternating), and the host memory of benchTemplateVMs idle
// VMs of each kind running at once: the sum of their QEMU processes' PSS
// (/proc/PID/smaps_rollup), in which pages shared between clones count
// once in all. The VMs have no free page reporting (shared clones refuse
// it). Run with -benchtime Nx for N rounds.
func BenchmarkTemplate(b *testing.B) {
	c := testConfig(b)
	c.Image.AssetsDir, _ = hullKernelAssets(b)
	c.Hypervisor.FreePageReporting = false // for the shared clones
	tdir := makeTemplate(b, c)
	kinds := []struct {
		name string
		tpl  func() *hypervisor.Template
	}{
		{"cold", func() *hypervisor.Template { return nil }},
		{"private", func() *hypervisor.Template {
			return &hypervisor.Template{Dir: tdir, Restore: true, Memory: hypervisor.TemplateMemoryPrivate}
		}},
		{"shared", func() *hypervisor.Template {
			return &hypervisor.Template{Dir: tdir, Restore: true, Memory: hypervisor.TemplateMemoryShared}
		}},
	}
	times := make([][]time.Duration, len(kinds))
	for i := 0; b.Loop(); i++ {
		for k, kind := range kinds {
			start := time.Now()
			_, stop := startTemplateVM(b, c, fmt.Sprintf("bt-%s-%d", kind.name, i), kind.tpl())
			times[k] = append(times[k], time.Since(start))
			stop()
		}
	}
	for k, kind := range kinds {
		b.ReportMetric(float64(medianDuration(times[k]).Milliseconds()), kind.name+"-agent-ms")
	}
	for _, kind := range kinds {
		var pss uint64
		var stops []func()
		var pids []int
		for j := range benchTemplateVMs {
			tv, stop := startTemplateVM(b, c, fmt.Sprintf("bm-%s-%d", kind.name, j), kind.tpl())
			stops = append(stops, stop)
			pids = append(pids, tv.vm.Describe().PID)
		}
		// Idle a moment: the guests settle after the agent's first answer.
		time.Sleep(2 * time.Second)
		for _, pid := range pids {
			_, p := e2e.SmapsRollup(pid)
			pss += p
		}
		b.ReportMetric(float64(pss)/1024, kind.name+"-pss-MiB")
		for _, stop := range stops {
			stop()
		}
	}
}
