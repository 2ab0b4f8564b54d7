package containerd

import (
	"fmt"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// reclaimFillMiB is how much guest memory the container takes and frees.
const reclaimFillMiB = 256

// TestFreePageReporting checks that memory a guest frees goes back to the
// host: a container fills a 256 MiB file on a tmpfs, which QEMU's resident
// memory shows, then deletes it; with free page reporting (the default)
// QEMU's RSS must fall by most of it.
func TestFreePageReporting(t *testing.T) {
	containerdPath, ctrPath := daemonBinaries(t, "1.6")
	d := startDaemon(t, containerdPath, ctrPath)
	defer d.checkClean(t)
	rss := func(pids []int) int64 { return rssKiB(t, pids) }
	idle, filled, after := fillAndFree(t, d, "reclaim", rss, 60*time.Second)
	t.Logf("QEMU RSS: idle %d MiB, after filling %d MiB, after freeing %d MiB", idle>>10, filled>>10, after>>10)
	if filled-idle < (reclaimFillMiB-56)<<10 {
		t.Fatalf("filling %d MiB in the guest grew QEMU's RSS by %d MiB only: the test measures nothing", reclaimFillMiB, (filled-idle)>>10)
	}
	if filled-after < (reclaimFillMiB-106)<<10 {
		t.Errorf("after the guest freed %d MiB, QEMU's RSS fell by %d MiB only (want >= %d MiB)", reclaimFillMiB, (filled-after)>>10, reclaimFillMiB-106)
	}
}

// BenchmarkMemoryReclaim reports QEMU's PSS for an idle pod, after its
// container filled 256 MiB of memory, and after it freed it (as soon as
// 200 MiB came back, else 30 s later), with free page reporting on (the
// default) and off.
func BenchmarkMemoryReclaim(b *testing.B) {
	containerdPath, ctrPath := daemonBinaries(b, "1.6")
	d := startDaemon(b, containerdPath, ctrPath)
	defer d.stop(b)
	pss := func(pids []int) int64 {
		var total int64
		for _, pid := range pids {
			_, kib := e2e.SmapsRollup(pid)
			total += int64(kib)
		}
		return total
	}
	for b.Loop() {
		for _, mode := range []struct {
			name string
			on   bool
		}{{"on", true}, {"off", false}} {
			d.setHullConfig(b, daemonOptions{hypervisor: []string{fmt.Sprintf("free_page_reporting = %t", mode.on)}})
			idle, filled, after := fillAndFree(b, d, "reclaim-"+mode.name, pss, 30*time.Second)
			b.ReportMetric(float64(idle)/1024, "idle-MiB-"+mode.name)
			b.ReportMetric(float64(filled)/1024, "filled-MiB-"+mode.name)
			b.ReportMetric(float64(after)/1024, "freed-MiB-"+mode.name)
		}
	}
	d.setHullConfig(b, daemonOptions{})
	d.checkClean(b)
}

// fillAndFree runs a container, measures its VMM (the task's PID) with
// measure when idle, after the container wrote reclaimFillMiB into a tmpfs
// file, and after it deleted the file: the last as soon as the memory went
// back, else when wait is over. It deletes the container.
func fillAndFree(tb testing.TB, d *daemon, id string, measure func([]int) int64, wait time.Duration) (idle, filled, after int64) {
	tb.Helper()
	d.mustCtr(tb, "run", "-d", "--runtime", runtimeName,
		"--mount", fmt.Sprintf("type=tmpfs,src=tmpfs,dst=/fill,options=size=%dm", reclaimFillMiB+16),
		imageName, id, "sleep", "600")
	defer func() {
		d.ctr(tb, "task", "kill", "-s", "KILL", id)
		d.ctr(tb, "task", "delete", "-f", id)
		d.ctr(tb, "container", "delete", id)
	}()
	vmm := []int{int(taskPID(tb, d, id))}
	time.Sleep(5 * time.Second) // let the boot's page cache settle
	idle = measure(vmm)
	d.mustCtr(tb, "task", "exec", "--exec-id", "fill", id, "dd", "if=/dev/zero", "of=/fill/f", "bs=1M", fmt.Sprintf("count=%d", reclaimFillMiB))
	filled = measure(vmm)
	d.mustCtr(tb, "task", "exec", "--exec-id", "free", id, "rm", "/fill/f")
	deadline := time.Now().Add(wait)
	for {
		after = measure(vmm)
		if filled-after >= (reclaimFillMiB-56)<<10 || time.Now().After(deadline) {
			return idle, filled, after
		}
		time.Sleep(time.Second)
	}
}
