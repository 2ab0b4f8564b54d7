package containerd

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkCtrRun times `ctr run --rm <busybox> true` end to end, with hull
// and with runc (containerd's runc shim) on the same daemon, alternating the
// two; medians over -benchtime Nx runs each (make bench uses 5). It also reports the host PSS of one
// idle pod: QEMU, virtiofsd (both of its processes) and the shim.
// Debian's containerd 1.6 is the daemon.
func BenchmarkCtrRun(b *testing.B) {
	containerdPath, ctrPath := daemonBinaries(b, "1.6")
	d := startDaemon(b, containerdPath, ctrPath)
	defer d.stop(b)
	var hull, runc []time.Duration
	for i := 0; b.Loop(); i++ {
		for _, rt := range []struct {
			name string
			into *[]time.Duration
		}{{runtimeName, &hull}, {"io.containerd.runc.v2", &runc}} {
			id := fmt.Sprintf("bench-%d-%s", i, strings.Split(rt.name, ".")[2])
			start := time.Now()
			d.mustCtr(b, "run", "--rm", "--runtime", rt.name, imageName, id, "true")
			*rt.into = append(*rt.into, time.Since(start))
		}
	}
	hm, rm := medianOf(hull), medianOf(runc)
	b.ReportMetric(float64(hm.Milliseconds()), "hull-ms")
	b.ReportMetric(float64(rm.Milliseconds()), "runc-ms")
	b.Logf("ctr run --rm true: hull %v; runc %v", hull, runc)

	// One idle pod.
	d.mustCtr(b, "run", "-d", "--runtime", runtimeName, imageName, "bench-idle", "sleep", "1000")
	time.Sleep(8 * time.Second)
	var total uint64
	var parts []string
	for _, pid := range podProcesses(d, "bench-idle") {
		pss := pssKiB(pid)
		total += pss
		parts = append(parts, fmt.Sprintf("%s=%dKiB", processName(pid), pss))
	}
	b.ReportMetric(float64(total)/1024, "idle-pod-pss-MiB")
	b.Logf("idle pod PSS: %s", strings.Join(parts, " "))
	d.mustCtr(b, "task", "kill", "-s", "KILL", "bench-idle")
	waitGone(b, d, "bench-idle")
	d.mustCtr(b, "container", "delete", "bench-idle")
	d.checkClean(b)
}

// podProcesses finds the shim of a container and the processes of its
// sandbox (command lines naming the sandbox's state directory).
func podProcesses(d *daemon, id string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		shim := strings.Contains(cmd, "containerd-shim-hull-v2") && strings.Contains(cmd, d.address) && strings.Contains(cmd, "-id "+id)
		if shim || strings.Contains(cmd, d.stateRoot+"/"+id) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitGone(b *testing.B, d *daemon, id string) {
	for i := 0; i < 100; i++ {
		out, _, _ := d.ctr(b, "task", "ls")
		if !strings.Contains(out, id+" ") || strings.Contains(out, "STOPPED") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _, _ = d.ctr(b, "task", "delete", "-f", id)
}

func pssKiB(pid int) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer func() { _ = f.Close() }() // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "Pss:" {
			v, _ := strconv.ParseUint(fields[1], 10, 64)
			return v
		}
	}
	return 0
}

func processName(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
