package hostcgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// fakeV2 lays out a cgroup v2 root offering cpu, memory, pids and io, with
// the pod cgroup "/kubepods/pod1" that kubelet would have made (its
// subtree_control already has memory).
func fakeV2(t *testing.T) FS {
	t.Helper()
	root := t.TempDir()
	write(t, filepath.Join(root, "cgroup.controllers"), "cpuset cpu io memory pids")
	must(t, os.MkdirAll(filepath.Join(root, "kubepods/pod1"), 0o755))
	write(t, filepath.Join(root, "kubepods/pod1/cgroup.subtree_control"), "memory")
	return FS{Unified: root}
}

// fakeProc lays out a /proc where pid 100 has the child 101, which has the
// child 102; 200 is unrelated.
func fakeProc(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	for pid, ppid := range map[int]int{100: 1, 101: 100, 102: 101, 200: 1} {
		must(t, os.MkdirAll(filepath.Join(dir, fmt.Sprint(pid)), 0o755))
		write(t, filepath.Join(dir, fmt.Sprint(pid), "stat"), fmt.Sprintf("%d (a b) c) S %d 1 1 0", pid, ppid))
	}
	old := procRoot
	procRoot = dir
	t.Cleanup(func() { procRoot = old })
}

func TestMain(m *testing.M) {
	removeDir = os.RemoveAll
	os.Exit(m.Run())
}

func TestCreateV2(t *testing.T) {
	fs := fakeV2(t)
	fakeProc(t)
	g, err := Create(fs, "/kubepods/pod1/sandbox1")
	if err != nil {
		t.Fatal(err)
	}
	// Controllers enabled top-down in each ancestor, not in the leaf;
	// only those missing are written.
	for dir, want := range map[string]string{
		"":              "+cpu +memory +pids",
		"kubepods":      "+cpu +memory +pids",
		"kubepods/pod1": "+cpu +pids",
	} {
		if got := read(t, filepath.Join(fs.Unified, dir, "cgroup.subtree_control")); got != want {
			t.Errorf("%s/cgroup.subtree_control = %q, want %q", dir, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, "kubepods/pod1/sandbox1/cgroup.subtree_control")); err == nil {
		t.Error("controllers enabled below the leaf")
	}
	if !g.Created() {
		t.Error("Created() = false for a new group")
	}

	leaf := filepath.Join(fs.Unified, "kubepods/pod1/sandbox1")
	// What the kernel shows once the parent enabled them.
	write(t, filepath.Join(leaf, "cgroup.controllers"), "cpu memory pids\n")
	write(t, filepath.Join(leaf, "memory.swap.max"), "max")
	if err := g.SetLimits(Limits{MemoryBytes: 768 << 20, CPUQuotaUs: 125000, CPUPeriodUs: 100000}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(leaf, "memory.swap.max")); got != "0" {
		t.Errorf("memory.swap.max = %q, want no swap", got)
	}
	if got := read(t, filepath.Join(leaf, "memory.max")); got != "805306368" {
		t.Errorf("memory.max = %q", got)
	}
	if got := read(t, filepath.Join(leaf, "cpu.max")); got != "125000 100000" {
		t.Errorf("cpu.max = %q", got)
	}

	// The process moves first, then its descendants; the unrelated one
	// stays out. (The fake cgroup.procs keeps the last write.)
	var writes []string
	procs := filepath.Join(leaf, "cgroup.procs")
	if err := g.AddTree(100); err != nil {
		t.Fatal(err)
	}
	writes = append(writes, read(t, procs))
	if writes[0] != "102" {
		t.Errorf("last pid moved %q, want the grandchild 102", writes[0])
	}

	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leaf); !os.IsNotExist(err) {
		t.Errorf("leaf not removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, "kubepods/pod1")); err != nil {
		t.Errorf("the pod cgroup, not the runtime's, was removed: %v", err)
	}
}

func TestCreateFoundIsNotRemoved(t *testing.T) {
	fs := fakeV2(t)
	g, err := Create(fs, "/kubepods/pod1")
	if err != nil {
		t.Fatal(err)
	}
	if g.Created() {
		t.Error("Created() = true for a group that existed")
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, "kubepods/pod1")); err != nil {
		t.Errorf("existing group removed: %v", err)
	}
	// Ancestors made on the way stay (other groups may go below them).
	g, err = Create(fs, "/default/c1")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, "default/c1")); !os.IsNotExist(err) {
		t.Errorf("leaf left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, "default")); err != nil {
		t.Errorf("ancestor removed: %v", err)
	}
}

func TestCreateV2WithoutMemoryController(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "cgroup.controllers"), "")
	g, err := Create(FS{Unified: root}, "/hull/x")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Delete() }()
	if _, err := os.Stat(filepath.Join(root, "cgroup.subtree_control")); err == nil {
		t.Error("enabled controllers the root does not offer")
	}
	// The group has none: limits and usage are not implemented here,
	// and no control file is made up.
	write(t, filepath.Join(root, "hull/x/cgroup.controllers"), "\n")
	if err := g.SetLimits(Limits{MemoryBytes: 1 << 30}); !errdefs.IsNotImplemented(err) {
		t.Errorf("memory limit without the controller: %v", err)
	}
	if err := g.SetLimits(Limits{CPUQuotaUs: 100000, CPUPeriodUs: 100000}); !errdefs.IsNotImplemented(err) {
		t.Errorf("cpu limit without the controller: %v", err)
	}
	if _, err := g.Usage(); !errdefs.IsNotImplemented(err) {
		t.Errorf("usage without the memory controller: %v", err)
	}
	for _, f := range []string{"memory.max", "cpu.max"} {
		if _, err := os.Stat(filepath.Join(root, "hull/x", f)); err == nil {
			t.Errorf("%s written", f)
		}
	}
}

func TestV1(t *testing.T) {
	root := t.TempDir()
	fs := FS{V1: []Hierarchy{
		{Mount: filepath.Join(root, "memory"), Controllers: []string{"memory"}},
		{Mount: filepath.Join(root, "cpu,cpuacct"), Controllers: []string{"cpu", "cpuacct"}},
		{Mount: filepath.Join(root, "systemd")},
		{Mount: filepath.Join(root, "cpuset"), Controllers: []string{"cpuset"}},
	}}
	for _, h := range fs.V1 {
		must(t, os.MkdirAll(h.Mount, 0o755))
	}
	// The cpuset root has every CPU; the pod's group (made by the
	// kubelet, pinned) has its own, and a new group below it starts
	// empty, as the kernel makes it.
	cpuset := filepath.Join(root, "cpuset")
	write(t, filepath.Join(cpuset, "cpuset.cpus"), "0-7\n")
	write(t, filepath.Join(cpuset, "cpuset.mems"), "0\n")
	must(t, os.MkdirAll(filepath.Join(cpuset, "pod1"), 0o755))
	write(t, filepath.Join(cpuset, "pod1/cpuset.cpus"), "2-3\n")
	write(t, filepath.Join(cpuset, "pod1/cpuset.mems"), "0\n")
	fakeProc(t)
	pg, err := Create(fs, "/pod1/sandbox")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"pod1/cpuset.cpus": "2-3\n", "pod1/cpuset.mems": "0\n",
		"pod1/sandbox/cpuset.cpus": "2-3", "pod1/sandbox/cpuset.mems": "0",
	} {
		if got := read(t, filepath.Join(cpuset, file)); got != want {
			t.Errorf("cpuset %s = %q, want %q", file, got, want)
		}
	}
	must(t, pg.Delete())
	g, err := Create(fs, "/default/c1")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"default/cpuset.cpus": "0-7", "default/c1/cpuset.cpus": "0-7", "default/c1/cpuset.mems": "0",
	} {
		if got := read(t, filepath.Join(cpuset, file)); got != want {
			t.Errorf("cpuset %s = %q, want %q", file, got, want)
		}
	}
	mem, cpu := filepath.Join(root, "memory/default/c1"), filepath.Join(root, "cpu,cpuacct/default/c1")
	write(t, filepath.Join(mem, "memory.memsw.limit_in_bytes"), "9223372036854771712")
	if err := g.SetLimits(Limits{MemoryBytes: 1 << 30, CPUQuotaUs: 225000, CPUPeriodUs: 100000}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		filepath.Join(mem, "memory.limit_in_bytes"):           "1073741824",
		filepath.Join(mem, "memory.memsw.limit_in_bytes"):     "1073741824",
		filepath.Join(mem, "memory.move_charge_at_immigrate"): "3",
		filepath.Join(cpu, "cpu.cfs_period_us"):               "100000",
		filepath.Join(cpu, "cpu.cfs_quota_us"):                "225000",
	} {
		if got := read(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if err := g.AddTree(100); err != nil {
		t.Fatal(err)
	}
	for _, h := range fs.V1 {
		if got := read(t, filepath.Join(h.Mount, "default/c1/cgroup.procs")); got != "102" {
			t.Errorf("%s: last pid moved %q", h.Mount, got)
		}
	}

	write(t, filepath.Join(mem, "memory.usage_in_bytes"), "52428800\n")
	write(t, filepath.Join(mem, "memory.stat"), "cache 1\nrss 2\ntotal_cache 4096\ntotal_rss 8192\ntotal_shmem 100\ntotal_inactive_file 50\n")
	write(t, filepath.Join(mem, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
	write(t, filepath.Join(cpu, "cpuacct.usage"), "3000000000\n")
	write(t, filepath.Join(cpu, "cpuacct.stat"), "user 250\nsystem 50\n")
	write(t, filepath.Join(cpu, "cpu.stat"), "nr_periods 10\nnr_throttled 3\nthrottled_time 7000\n")
	u, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	want := Usage{MemoryBytes: 50 << 20, MemoryLimitBytes: 1 << 30, Anon: 8192, File: 4096, Shmem: 100, InactiveFile: 50, OOMKills: 2,
		CPUUsageUsec: 3000000, CPUUserUsec: 2500000, CPUSystemUsec: 500000, NrPeriods: 10, NrThrottled: 3, ThrottledUsec: 7}
	if u != want {
		t.Errorf("usage %+v, want %+v", u, want)
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	for _, h := range fs.V1 {
		if _, err := os.Stat(filepath.Join(h.Mount, "default/c1")); !os.IsNotExist(err) {
			t.Errorf("%s: leaf not removed: %v", h.Mount, err)
		}
	}
}

func TestUsageV2(t *testing.T) {
	fs := fakeV2(t)
	g, err := Create(fs, "/kubepods/pod1/s")
	if err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(fs.Unified, "kubepods/pod1/s")
	write(t, filepath.Join(d, "cgroup.controllers"), "cpu memory pids\n")
	write(t, filepath.Join(d, "memory.current"), "1048576\n")
	write(t, filepath.Join(d, "memory.max"), "max\n")
	write(t, filepath.Join(d, "memory.stat"), "anon 10\nfile 20\nshmem 5\ninactive_file 7\n")
	write(t, filepath.Join(d, "memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
	write(t, filepath.Join(d, "cpu.stat"), "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 2\nnr_throttled 1\nthrottled_usec 40\n")
	write(t, filepath.Join(d, "pids.current"), "9\n")
	u, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	want := Usage{MemoryBytes: 1 << 20, Anon: 10, File: 20, Shmem: 5, InactiveFile: 7, OOMKills: 1,
		CPUUsageUsec: 900, CPUUserUsec: 600, CPUSystemUsec: 300, NrPeriods: 2, NrThrottled: 1, ThrottledUsec: 40, Pids: 9}
	if u != want {
		t.Errorf("usage %+v, want %+v", u, want)
	}
}

func write(t *testing.T, file, data string) {
	t.Helper()
	must(t, os.WriteFile(file, []byte(data), 0o644))
}

func read(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestHost(t *testing.T) {
	const hybrid = `25 24 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/cpuset rw,nosuid shared:13 - cgroup cgroup rw,cpuset
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
`
	const unified = `25 24 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	for _, tc := range []struct {
		name, mountinfo string
		want            FS
	}{
		{"hybrid: the v1 hierarchies", hybrid, FS{V1: []Hierarchy{
			{Mount: "/sys/fs/cgroup/systemd"},
			{Mount: "/sys/fs/cgroup/memory", Controllers: []string{"memory"}},
			{Mount: "/sys/fs/cgroup/cpuset", Controllers: []string{"cpuset"}},
			{Mount: "/sys/fs/cgroup/cpu,cpuacct", Controllers: []string{"cpu", "cpuacct"}},
		}}},
		{"v1 with a noprefix cpuset left out", strings.Replace(hybrid, "rw,cpuset", "rw,cpuset,noprefix", 1), FS{V1: []Hierarchy{
			{Mount: "/sys/fs/cgroup/systemd"},
			{Mount: "/sys/fs/cgroup/memory", Controllers: []string{"memory"}},
			{Mount: "/sys/fs/cgroup/cpu,cpuacct", Controllers: []string{"cpu", "cpuacct"}},
		}}},
		{"unified", unified, FS{Unified: "/sys/fs/cgroup"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			must(t, os.MkdirAll(filepath.Join(dir, "self"), 0o755))
			write(t, filepath.Join(dir, "self/mountinfo"), tc.mountinfo)
			old := procRoot
			procRoot = dir
			defer func() { procRoot = old }()
			got, err := Host()
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("Host() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestRecorded checks the crash cleanup's handle: it removes the recorded
// group (made by another Group, as a runtime that died made it), not its
// ancestors, takes a group already gone as done, and refuses a bad path.
func TestRecorded(t *testing.T) {
	fs := fakeV2(t)
	if _, err := Create(fs, "/hull/sb1"); err != nil {
		t.Fatal(err)
	}
	g, err := Recorded(fs, "/hull/sb1", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, "hull/sb1")); !os.IsNotExist(err) {
		t.Errorf("recorded group left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, "hull")); err != nil {
		t.Errorf("ancestor removed: %v", err)
	}
	if g, err := Recorded(fs, "/hull/gone", ""); err != nil || g.Delete() != nil {
		t.Errorf("a group already gone: %v", err)
	}
	if _, err := Recorded(fs, "/hull/../etc", ""); err == nil {
		t.Error("a path with .. accepted")
	}
}
