package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
)

// testCgroupV2 makes a cgroup v2 directory for a test (on a cgroup v1
// host, in its unified hierarchy) and removes it after.
func testCgroupV2(t *testing.T, name string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it makes cgroups")
	}
	root := "/sys/fs/cgroup"
	if !cgroups.IsCgroup2UnifiedMode() {
		root = "/sys/fs/cgroup/unified"
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		t.Fatalf("no cgroup v2 hierarchy at %s: %v", root, err)
	}
	dir := filepath.Join(root, "hull-test-"+name+"-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s left", dir)
	})
	return dir
}

// TestKillCgroup kills cgroups whose processes keep forking long-lived
// children, by cgroup.kill and by the freeze that older kernels use:
// nothing is left. A list of the processes killed once leaves the
// children forked meanwhile.
func TestKillCgroup(t *testing.T) {
	for name, kill := range map[string]func(string) error{"cgroup.kill": killCgroup, "freeze": freezeAndKill} {
		t.Run(name, func(t *testing.T) {
			dir := testCgroupV2(t, strings.ReplaceAll(name, ".", "-"))
			// Forkers in the cgroup (the shell moves itself in first).
			cmd := exec.Command("sh", "-c", `echo $$ > `+filepath.Join(dir, "cgroup.procs")+` || exit 1
for i in 1 2 3 4 5 6 7 8; do (while :; do sleep 1000 & done) & done
wait`)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Wait() }()
			time.Sleep(500 * time.Millisecond)
			if pids, err := cgroups.GetAllPids(dir); err != nil || len(pids) < 9 {
				t.Fatalf("processes in the cgroup: %d, %v; want the forkers running", len(pids), err)
			}
			if err := kill(dir); err != nil {
				t.Fatal(err)
			}
			var pids []int
			for i := 0; i < 100; i++ {
				var err error
				if pids, err = cgroups.GetAllPids(dir); err != nil {
					t.Fatal(err)
				}
				if len(pids) == 0 {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Errorf("%d processes left in the cgroup after the kill", len(pids))
		})
	}
}
