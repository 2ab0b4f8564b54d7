package containerd

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// ctrBenchImage is one guest image of BenchmarkCtrRun, given to hull by a
// runtime configuration of its own (ctr's --runtime-config-path).
type ctrBenchImage struct {
	name string
	// env names the image directory; empty: the suite's image.
	env    string
	config string
}

// BenchmarkCtrRun times `ctr run --rm <busybox> true` end to end with hull
// booting each of three guest images (Debian's kernel with its initrd: the
// suite's image; the hull kernel with its initrd:
// HULL_TEST_ASSETS_HULLKERNEL; the hull kernel's erofs root image on
// virtio-pmem: HULL_TEST_ASSETS_ROOTFS) and with runc (containerd's runc
// shim), all on the same daemon, in turn in each round; medians over
// -benchtime Nx rounds (make bench uses 5), and each hull image's ratio
// to runc. It also reports the host PSS of one idle pod of each image:
// QEMU, virtiofsd (both of its processes) and the shim. Debian's
// containerd 1.6 is the daemon.
func BenchmarkCtrRun(b *testing.B) {
	containerdPath, ctrPath := daemonBinaries(b, "1.6")
	d := startDaemon(b, containerdPath, ctrPath)
	defer d.stop(b)
	images := []*ctrBenchImage{{name: "debian"}, {name: "hull-initrd", env: "HULL_TEST_ASSETS_HULLKERNEL"}, {name: "hull-rootfs", env: "HULL_TEST_ASSETS_ROOTFS"}}
	for _, im := range images {
		dir := env.assetsDir
		if im.env != "" {
			if dir = os.Getenv(im.env); dir == "" {
				b.Fatalf("%s is not set: it names the %s guest image (make image-hullkernel image-rootfs; make bench sets it)", im.env, im.name)
			}
		}
		im.config = filepath.Join(d.dir, "hull-"+im.name+".toml")
		if err := os.WriteFile(im.config, []byte(d.hullConfig(daemonOptions{assetsDir: dir})), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	runs := map[string][]time.Duration{}
	for i := 0; b.Loop(); i++ {
		for _, im := range images {
			id := fmt.Sprintf("bench-%d-%s", i, im.name)
			start := time.Now()
			d.mustCtr(b, "run", "--rm", "--runtime", runtimeName, "--runtime-config-path", im.config, imageName, id, "true")
			runs[im.name] = append(runs[im.name], time.Since(start))
		}
		id := fmt.Sprintf("bench-%d-runc", i)
		start := time.Now()
		d.mustCtr(b, "run", "--rm", "--runtime", "io.containerd.runc.v2", imageName, id, "true")
		runs["runc"] = append(runs["runc"], time.Since(start))
	}
	rm := medianOf(runs["runc"])
	b.ReportMetric(float64(rm.Milliseconds()), "runc-ms")
	for _, im := range images {
		m := medianOf(runs[im.name])
		b.ReportMetric(float64(m.Milliseconds()), im.name+"-ms")
		if rm > 0 {
			b.ReportMetric(float64(m)/float64(rm), im.name+"/runc")
		}
		b.Logf("ctr run --rm true with %s: %v", im.name, runs[im.name])
	}
	b.Logf("ctr run --rm true with runc: %v", runs["runc"])

	// One idle pod of each image.
	for _, im := range images {
		id := "bench-idle-" + im.name
		d.mustCtr(b, "run", "-d", "--runtime", runtimeName, "--runtime-config-path", im.config, imageName, id, "sleep", "1000")
		time.Sleep(8 * time.Second)
		var total uint64
		var parts []string
		for _, pid := range podProcesses(d, id) {
			_, pss := e2e.SmapsRollup(pid)
			total += pss
			parts = append(parts, fmt.Sprintf("%s=%dKiB", processName(pid), pss))
		}
		b.ReportMetric(float64(total)/1024, im.name+"-idle-pod-pss-MiB")
		b.Logf("idle %s pod PSS: %s", im.name, strings.Join(parts, " "))
		d.mustCtr(b, "task", "kill", "-s", "KILL", id)
		waitGone(b, d, id)
		d.mustCtr(b, "container", "delete", id)
	}
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

func processName(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
