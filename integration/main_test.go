package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// env is what TestMain found and built.
var env struct {
	assetsDir string
	binDir    string
	// silentInit, floorInit and floodInit are test guest inits built by
	// TestMain.
	silentInit string
	floorInit  string
	floodInit  string
	workDir    string
	manifest   *guestimage.Manifest
}

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration tests cannot run: %v\n", err)
		os.Exit(2)
	}
	if code == 0 {
		code = m.Run()
	}
	_ = os.RemoveAll(env.workDir) // best effort: a leftover temp dir must not change the exit code
	os.Exit(code)
}

func setup() (int, error) {
	if os.Geteuid() != 0 {
		return 0, fmt.Errorf("they need root (VMs, cgroups, mounts)")
	}
	env.assetsDir = os.Getenv("HULL_ASSETS_DIR")
	env.binDir = os.Getenv("HULL_BIN_DIR")
	if env.assetsDir == "" || env.binDir == "" {
		return 0, fmt.Errorf("HULL_ASSETS_DIR and HULL_BIN_DIR must be set; run `make integration`")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return 0, fmt.Errorf("qemu-system-x86_64 not found (apt-get install qemu-system-x86): %w", err)
	}
	m, err := guestimage.ReadManifest(env.assetsDir)
	if err != nil {
		return 0, fmt.Errorf("guest image: %w", err)
	}
	if err := m.Verify(env.assetsDir); err != nil {
		return 0, fmt.Errorf("guest image: %w", err)
	}
	env.manifest = m
	dir, err := os.MkdirTemp("/tmp", "hull-it-")
	if err != nil {
		return 0, err
	}
	env.workDir = dir
	for name, dst := range map[string]*string{"silentinit": &env.silentInit, "floorinit": &env.floorInit, "floodinit": &env.floodInit} {
		*dst = filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", *dst, "./testdata/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("building %s: %w\n%s", name, err, out)
		}
	}
	return 0, nil
}

// testConfig returns a configuration for one test: the built assets, a
// private state root and cgroup parent, and timeouts that suit TCG.
func testConfig(t testing.TB) *config.Config {
	t.Helper()
	c := config.Defaults()
	c.Image.AssetsDir = env.assetsDir
	root, err := os.MkdirTemp(env.workDir, "s")
	if err != nil {
		t.Fatal(err)
	}
	c.Runtime.StateDir = root
	c.Runtime.CgroupParent = "hull-it/" + filepath.Base(root)
	c.Agent.DialTimeout = config.Duration{Duration: 60 * time.Second}
	c.Agent.CallTimeout = config.Duration{Duration: 20 * time.Second}
	t.Cleanup(func() { assertNoLeaks(t, c) })
	return c
}

// assertNoLeaks fails the test when anything of the configuration's sandboxes
// remains: a process whose command line names the state root, an entry in the
// state root, or a cgroup below the cgroup parent.
func assertNoLeaks(t testing.TB, c *config.Config) {
	t.Helper()
	root := c.Runtime.StateDir
	// Processes may need a moment to be reaped after Stop returned.
	deadline := time.Now().Add(5 * time.Second)
	var pids []int
	for {
		pids = processesMentioning(root)
		if len(pids) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, pid := range pids {
		t.Errorf("process %d (%s) still runs after the test", pid, cmdline(pid))
		_ = exec.Command("kill", "-9", strconv.Itoa(pid)).Run()
	}
	if entries, err := os.ReadDir(root); err == nil {
		names := []string{}
		for _, e := range entries {
			// The node's boot slots (lock files, held by no one) and
			// start counts stay.
			if !sandbox.IsNodeState(e.Name()) {
				names = append(names, e.Name())
			}
		}
		if len(names) > 0 {
			t.Errorf("state root %s still holds %v", root, names)
		}
	}
	for _, cg := range cgroupDirs(c.Runtime.CgroupParent) {
		sub, _ := os.ReadDir(cg)
		for _, e := range sub {
			if e.IsDir() {
				t.Errorf("cgroup %s/%s left behind", cg, e.Name())
			}
		}
		_ = os.Remove(cg)
	}
	_ = os.RemoveAll(root)
}

func processesMentioning(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if strings.Contains(cmdline(pid), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return string(bytes.ReplaceAll(bytes.TrimRight(b, "\x00"), []byte{0}, []byte{' '}))
}

// cgroupDirs lists the directories of a cgroup path on every mounted
// hierarchy (v2 unified, or each v1 controller).
func cgroupDirs(rel string) []string {
	var dirs []string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		p := filepath.Join("/sys/fs/cgroup", rel)
		if _, err := os.Stat(p); err == nil {
			dirs = append(dirs, p)
		}
		return dirs
	}
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range entries {
		p := filepath.Join("/sys/fs/cgroup", e.Name(), rel)
		if _, err := os.Stat(p); err == nil {
			dirs = append(dirs, p)
		}
	}
	return dirs
}

func withTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// customInitrd packs init as /init of an initrd without modules, for tests
// that boot something other than the agent.
func customInitrd(t testing.TB, init string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initrd.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guestimage.WriteInitrd(context.Background(), f, guestimage.InitrdSpec{Init: init, Compression: "zstd"}); err != nil {
		_ = f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func timestampNow() *timestamppb.Timestamp { return timestamppb.Now() }
