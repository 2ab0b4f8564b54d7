package hostcgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/child"
)

// realV2 returns a real cgroup v2 mount to place processes in: the host's
// v2 root, or the controller-less v2 mount of a hybrid host.
func realV2(t *testing.T) FS {
	t.Helper()
	var missing string
	switch {
	case os.Geteuid() != 0:
		missing = "root"
	default:
		for _, m := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			if _, err := os.Stat(filepath.Join(m, "cgroup.procs")); err == nil {
				if _, err := os.Stat(filepath.Join(m, "cgroup.controllers")); err == nil {
					return FS{Unified: m}
				}
			}
		}
		missing = "a cgroup v2 mount"
	}
	missingHost(t, "placement test needs "+missing)
	return FS{}
}

// realV1 returns the host's real v1 hierarchy of controller, once it has
// checked that the test runs as root and that the hierarchy has file;
// need says what the test needs, for the failure or skip.
func realV1(t *testing.T, controller, file, need string) FS {
	t.Helper()
	mount := "/sys/fs/cgroup/" + controller
	if _, err := os.Stat(filepath.Join(mount, file)); err != nil || os.Geteuid() != 0 {
		missingHost(t, "needs root and "+need)
	}
	return FS{V1: []Hierarchy{{Mount: mount, Controllers: []string{controller}}}}
}

// missingHost reports that the host lacks what the test needs: in CI a
// failure, elsewhere a skip.
func missingHost(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// realRemove makes the removal of a cgroup directory the production one
// (rmdir; the package's tests remove their fake trees with RemoveAll); the
// returned restore is for the test to defer.
func realRemove() (restore func()) {
	old := removeDir
	removeDir = os.Remove
	return func() { removeDir = old }
}

// TestAddTreeReal moves a shell and the children it forked into a real v2
// group and reads each one's /proc/<pid>/cgroup.
func TestAddTreeReal(t *testing.T) {
	fs := realV2(t)
	// A real cgroup is removed as in production: rmdir, retried while
	// the killed processes are leaving it.
	defer realRemove()()
	path := fmt.Sprintf("/hull-test-%d/sandbox", os.Getpid())
	g, err := Create(fs, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(fs.Unified, filepath.Dir(path))) })
	cmd := exec.Command("sh", "-c", "sleep 60 & sleep 60 & echo ready; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, pid := range append(descendants(cmd.Process.Pid), cmd.Process.Pid) {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		_ = cmd.Wait()
		if err := g.Delete(); err != nil {
			t.Error(err)
		}
	}()
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	// Both children forked before the move.
	deadline := time.Now().Add(10 * time.Second)
	for len(descendants(cmd.Process.Pid)) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := g.AddTree(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	pids := append(descendants(cmd.Process.Pid), cmd.Process.Pid)
	if len(pids) != 3 {
		t.Fatalf("processes %v, want the shell and two children", pids)
	}
	for _, pid := range pids {
		if got := v2CgroupOf(t, pid); got != path {
			t.Errorf("pid %d in %q, want %q", pid, got, path)
		}
	}
	b, err := os.ReadFile(filepath.Join(fs.Unified, path, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if !slices.Contains(strings.Fields(string(b)), fmt.Sprint(pid)) {
			t.Errorf("cgroup.procs %q lacks %d", b, pid)
		}
	}
}

// v2CgroupOf reads the "0::" line of /proc/<pid>/cgroup.
func v2CgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	return ""
}

// TestMemoryLimitReal sets and raises a memory limit in the host's real v1
// memory hierarchy, where the limit may never exceed memory and swap
// together (memory.memsw.limit_in_bytes) when the host accounts swap.
func TestMemoryLimitReal(t *testing.T) {
	fs := realV1(t, "memory", "memory.memsw.limit_in_bytes", "a cgroup v1 memory hierarchy with swap accounting")
	mount := fs.V1[0].Mount
	defer realRemove()()
	path := fmt.Sprintf("/hull-test-%d", os.Getpid())
	g, err := Create(fs, path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := g.Delete(); err != nil {
			t.Error(err)
		}
	}()
	for _, mib := range []int64{256, 1024, 1152} {
		if err := g.SetLimits(Limits{MemoryBytes: mib << 20}); err != nil {
			t.Fatalf("%d MiB: %v", mib, err)
		}
		for _, f := range []string{"memory.limit_in_bytes", "memory.memsw.limit_in_bytes"} {
			b, err := os.ReadFile(filepath.Join(mount, path, f))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != fmt.Sprint(mib<<20) {
				t.Errorf("%d MiB: %s = %s", mib, f, got)
			}
		}
	}
}

// bornOnly is a group that refuses moves: a child started in it must have
// been born there (CLONE_INTO_CGROUP).
type bornOnly struct{ *Group }

func (bornOnly) AddTree(pid int) error {
	return fmt.Errorf("pid %d would be moved after its start", pid)
}

// TestStartInReal starts a child directly in a real v2 group (the kernel's
// CLONE_INTO_CGROUP, no move) and checks its /proc/<pid>/cgroup, then that
// the group is removed once the child is gone.
func TestStartInReal(t *testing.T) {
	fs := realV2(t)
	defer realRemove()()
	parent := fmt.Sprintf("/hull-test-%d", os.Getpid())
	path := parent + "/born"
	g, err := Create(fs, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = g.Delete()
		_ = os.Remove(filepath.Join(fs.Unified, parent))
	})
	cmd := exec.Command("sleep", "60")
	exited := make(chan struct{})
	if _, err := child.StartIn(cmd, nil, bornOnly{g}, func(*os.ProcessState, error) { close(exited) }); err != nil {
		t.Fatal(err)
	}
	if got := v2CgroupOf(t, cmd.Process.Pid); got != path {
		t.Errorf("child in %q, want %q", got, path)
	}
	_ = cmd.Process.Kill()
	<-exited
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fs.Unified, path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("group left behind: %v", err)
	}
}

// TestCpusetReal places a child in a new group of the host's real v1
// cpuset hierarchy: the group gets its parent's CPUs and memory nodes
// (else nothing could join it), the child is moved in after its start
// (cgroup v1 has no CLONE_INTO_CGROUP), and the group is removed after.
func TestCpusetReal(t *testing.T) {
	fs := realV1(t, "cpuset", "cpuset.cpus", "a cgroup v1 cpuset hierarchy")
	mount := fs.V1[0].Mount
	defer realRemove()()
	parent := fmt.Sprintf("/hull-test-%d", os.Getpid())
	path := parent + "/sandbox"
	g, err := Create(fs, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = g.Delete()
		_ = os.Remove(filepath.Join(mount, parent))
	})
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		root, err := os.ReadFile(filepath.Join(mount, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(mount, path, f))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(root) {
			t.Errorf("%s = %q, want the root's %q", f, got, root)
		}
	}
	cmd := exec.Command("sleep", "60")
	exited := make(chan struct{})
	if _, err := child.StartIn(cmd, nil, g, func(*os.ProcessState, error) { close(exited) }); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(strings.Split(string(b), "\n"), func(l string) bool { return strings.HasSuffix(l, ":cpuset:"+path) }) {
		t.Errorf("child not in the cpuset group:\n%s", b)
	}
	_ = cmd.Process.Kill()
	<-exited
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mount, path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("group left behind: %v", err)
	}
}
