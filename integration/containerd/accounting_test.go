package containerd

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestAccounting runs pods with ctr and checks where their host processes
// are charged: QEMU and virtiofsd, every thread of them, in the cgroup the
// container's spec names (cgroupfs and systemd forms), with a memory limit
// of the VM's memory plus the configured overhead; the sandbox's metrics
// are that cgroup's; the cgroup is gone after delete. A pod asking for a VM
// beyond the size cap, or for a cgroup path that climbs out of the root,
// is refused with a clear error and leaves nothing.
func TestAccounting(t *testing.T) {
	containerdPath, ctrPath := daemonBinaries(t, "1.6")
	d := startDaemon(t, containerdPath, ctrPath)
	// ctr's cgroupsPath is /<namespace>/<id>; the runtime leaves the
	// namespace's group, as runc does: remove it when it is empty.
	t.Cleanup(func() {
		for _, h := range v1Hierarchies() {
			_ = os.Remove(filepath.Join(h, "default"))
		}
	})

	t.Run("cgroupfs path", func(t *testing.T) {
		defer d.checkClean(t)
		checkPodCgroup(t, d, "acct-fs", "")
	})
	t.Run("systemd path", func(t *testing.T) {
		defer d.checkClean(t)
		checkPodCgroup(t, d, "acct-sd", "hulltest.slice:hull:acct-sd")
		// The slice directories are made on the way and, like runc's,
		// left; this test removes its own.
		for _, h := range v1Hierarchies() {
			_ = os.Remove(filepath.Join(h, "hulltest.slice"))
		}
	})
	t.Run("beyond the size cap", func(t *testing.T) {
		defer d.checkClean(t)
		const id = "acct-big"
		_, errOut, code := d.ctr(t, "run", "--rm", "--runtime", runtimeName,
			"--annotation", "io.kubernetes.cri.sandbox-memory=1099511627776", imageName, id, "true")
		d.forget(t, id)
		if code == 0 || !strings.Contains(errOut, "beyond the cap") || !strings.Contains(errOut, "max_memory_mib") {
			t.Errorf("a 1 TiB pod: exit %d, stderr %q; want a refusal naming the cap", code, errOut)
		}
		checkNoCgroup(t, "/default/"+id)
	})
	t.Run("hostile cgroup path", func(t *testing.T) {
		defer d.checkClean(t)
		const id = "acct-escape"
		_, errOut, code := d.ctr(t, "run", "--rm", "--runtime", runtimeName, "--cgroup", "/default/../../escape", imageName, id, "true")
		d.forget(t, id)
		if code == 0 || !strings.Contains(errOut, "cgroups path") {
			t.Errorf("a cgroups path with ..: exit %d, stderr %q; want a refusal", code, errOut)
		}
		checkNoCgroup(t, "/escape")
	})
}

// checkPodCgroup runs a pod and checks its host processes' cgroup, limit
// and metrics.
func checkPodCgroup(t *testing.T, d *daemon, id, cgroupFlag string) {
	args := []string{"run", "-d", "--runtime", runtimeName}
	if cgroupFlag != "" {
		args = append(args, "--cgroup", cgroupFlag)
	}
	d.mustCtr(t, append(args, imageName, id, "sleep", "600")...)
	defer d.forget(t, id)

	var info struct {
		Spec struct {
			Linux struct {
				CgroupsPath string `json:"cgroupsPath"`
			} `json:"linux"`
		} `json:"Spec"`
	}
	if err := json.Unmarshal([]byte(d.mustCtr(t, "container", "info", id)), &info); err != nil {
		t.Fatal(err)
	}
	want := info.Spec.Linux.CgroupsPath
	if cgroupFlag != "" {
		want = "/hulltest.slice/hull-acct-sd.scope"
	}
	if want == "" {
		t.Fatal("the container's spec has no cgroupsPath")
	}

	var qemu, virtiofsd []int
	for _, pid := range podProcesses(d, id) {
		switch processName(pid) {
		case "qemu-system-x86":
			qemu = append(qemu, pid)
		case "virtiofsd":
			virtiofsd = append(virtiofsd, pid)
		}
	}
	if len(qemu) != 1 || len(virtiofsd) == 0 {
		t.Fatalf("found qemu %v and virtiofsd %v, want one qemu and virtiofsd", qemu, virtiofsd)
	}
	for _, pid := range append(qemu, virtiofsd...) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
		if len(tasks) == 0 {
			t.Errorf("pid %d: no threads", pid)
		}
		for _, task := range tasks {
			for _, ctrl := range []string{"memory", "cpu"} {
				if got := v1CgroupOf(t, task, ctrl); got != want {
					t.Errorf("%s (%s) thread %s: %s cgroup %q, want %q", processName(pid), task, filepath.Base(task), ctrl, got, want)
				}
			}
		}
	}

	// The limit is the VM's memory (QEMU's -m) plus the default overhead.
	vmMiB := qemuMemoryMiB(t, qemu[0])
	memDir := filepath.Join("/sys/fs/cgroup/memory", want)
	limit := readInt(t, filepath.Join(memDir, "memory.limit_in_bytes"))
	if wantLimit := (vmMiB + 256) << 20; limit != wantLimit {
		t.Errorf("memory.limit_in_bytes %d, want %d (%d MiB of VM + 256 MiB)", limit, wantLimit, vmMiB)
	}
	quota := readInt(t, filepath.Join("/sys/fs/cgroup/cpu", want, "cpu.cfs_quota_us"))
	if quota != 125000 {
		t.Errorf("cpu.cfs_quota_us %d, want 125000 (one vCPU and a quarter)", quota)
	}
	used := readInt(t, filepath.Join(memDir, "memory.usage_in_bytes"))
	t.Logf("pod cgroup %s: %d MiB used of %d MiB; qemu outside guest RAM %d MiB; virtiofsd RSS %d MiB",
		want, used>>20, limit>>20, qemuOverheadKiB(t, qemu[0])>>10, rssKiB(t, virtiofsd)>>10)

	// The sandbox's metrics are those of its host cgroup.
	var m struct {
		Memory struct {
			Usage      uint64 `json:"usage"`
			UsageLimit uint64 `json:"usage_limit"`
		} `json:"memory"`
	}
	out := d.mustCtr(t, "task", "metrics", "--format", "json", id)
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("metrics %q: %v", out, err)
	}
	if m.Memory.UsageLimit != uint64(limit) || m.Memory.Usage < 32<<20 {
		t.Errorf("metrics: memory %+v, want the host cgroup's (limit %d, usage about %d)", m.Memory, limit, used)
	}

	d.mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, d, id, "STOPPED")
	d.mustCtr(t, "task", "delete", id)
	d.mustCtr(t, "container", "delete", id)
	checkNoCgroup(t, want)
}

// v1Hierarchies are the host's cgroup v1 mounts of controllers.
func v1Hierarchies() []string {
	var out []string
	for _, c := range []string{"memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "freezer", "systemd"} {
		out = append(out, filepath.Join("/sys/fs/cgroup", c))
	}
	return out
}

// checkNoCgroup fails when the cgroup exists in a v1 hierarchy.
func checkNoCgroup(t *testing.T, path string) {
	t.Helper()
	for _, h := range v1Hierarchies() {
		if _, err := os.Stat(filepath.Join(h, path)); err == nil {
			t.Errorf("cgroup %s left in %s", path, h)
		}
	}
}

// v1CgroupOf reads a task's cgroup in the v1 hierarchy of controller.
func v1CgroupOf(t *testing.T, task, controller string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(task, "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && strings.Contains(","+f[1]+",", ","+controller+",") {
			return f[2]
		}
	}
	return ""
}

// qemuMemoryMiB reads the boot memory from QEMU's "-m size=NM,...".
func qemuMemoryMiB(t *testing.T, pid int) int64 {
	t.Helper()
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(string(b), "\x00")
	for i, a := range args {
		if a == "-m" && i+1 < len(args) {
			for _, kv := range strings.Split(args[i+1], ",") {
				v := strings.TrimPrefix(kv, "size=")
				if n, err := strconv.ParseInt(strings.TrimSuffix(v, "M"), 10, 64); err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no -m in %q", args)
	return 0
}

// qemuOverheadKiB is QEMU's resident memory outside the guest's RAM (the
// memfd that backs it).
func qemuOverheadKiB(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var total int64
	guest := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 {
			guest = len(fields) >= 6 && strings.HasPrefix(fields[5], "/memfd:")
			continue
		}
		if fields[0] == "Rss:" && !guest {
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			total += n
		}
	}
	return total
}

func rssKiB(t *testing.T, pids []int) int64 {
	t.Helper()
	var total int64
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				total += n
			}
		}
	}
	return total
}

func readInt(t *testing.T, file string) int64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
