package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/guestimage"
)

func TestZZExplore(t *testing.T) {
	kind := os.Getenv("ZZ_KIND")
	dir := os.Getenv("ZZ_DIR")
	n, _ := strconv.Atoi(os.Getenv("ZZ_N"))
	if n == 0 {
		n = 1
	}
	b := &testing.B{}
	_ = b
	c := testConfig(t)
	c.Agent.Transport = "serial"
	c.Image.AssetsDir = dir
	if kind == "" {
		kind = guestimage.KindInitrd
	}
	c.Image.Kind = kind
	if extra := os.Getenv("ZZ_PARAMS"); extra != "" {
		c.Hypervisor.KernelParams = append(c.Hypervisor.KernelParams, strings.Fields(extra)...)
	}
	if os.Getenv("ZZ_NOFPR") != "" {
		c.Hypervisor.FreePageReporting = false
	}
	t0 := time.Now()
	sbs, err := startSandboxes(c, "zz", n)
	if err != nil {
		t.Fatal(err)
	}
	defer stopSandboxes(sbs)
	t.Logf("started %d in %v; qemu cpu %v", n, time.Since(t0), processCPU(sbs[0].VM().Describe().PID))
	for _, at := range []time.Duration{3 * time.Second, 8 * time.Second} {
		time.Sleep(at - time.Since(t0))
		var lines []string
		for _, pid := range processesMentioning(c.Runtime.StateDir) {
			_, pss := smapsRollup(pid)
			lines = append(lines, fmt.Sprintf("%s:%d", strings.TrimSpace(readComm(pid)), pss))
		}
		t.Logf("at %v: %v", at, lines)
	}
	if gm, err := sbs[0].System().GuestMetrics(withTimeout(t, time.Minute), &agent.GuestMetricsRequest{}); err == nil {
		m := gm.GetMemory()
		t.Logf("guest: total %d MiB free %d MiB cached %d MiB shmem %d MiB slab %d MiB used(total-free) %d MiB", m.GetTotalBytes()>>20, m.GetFreeBytes()>>20, m.GetCachedBytes()>>20, m.GetShmemBytes()>>20, m.GetSlabBytes()>>20, (m.GetTotalBytes()-m.GetFreeBytes())>>20)
	}
	pid := sbs[0].VM().Describe().PID
	out, _ := exec.Command("sh", "-c", fmt.Sprintf(`awk '/^[0-9a-f]+-[0-9a-f]+ /{hdr=$0} /^Size:/{sz=$2} /^Rss:/{rss=$2} /^Pss:/{pss=$2; if (rss>256) print sz, rss, pss, hdr}' /proc/%d/smaps | sort -k3 -n -r | head -25; cat /proc/%d/smaps_rollup; cat /proc/%d/cmdline | tr '\0' ' '`, pid, pid, pid)).CombinedOutput()
	t.Logf("qemu smaps:\n%s", out)
	if os.Getenv("ZZ_HOLD") != "" {
		time.Sleep(5 * time.Minute)
	}
}

func readComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return string(b)
}
