package containerd

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// The bounds the hostile cases hold the host to. Where the configuration
// has a knob the value is its default; adjust them together.
const (
	// hostileConsoleMax bounds a sandbox's console log files while the
	// guest floods the serial console: two files of the default 1 MiB
	// bound, and room for one line.
	hostileConsoleMax = 2<<20 + 64<<10
	// hostileShimRSSMax bounds the shim's resident memory while the guest
	// floods its log and opens streams: about twice a quiet shim's (~25
	// MiB). Unbounded, 500 guest-opened streams hold a 256 KiB receive
	// window each (~175 MiB RSS measured).
	hostileShimRSSMax = 64 << 20
	// hostileLogLineMax bounds one line the host logs for the guest.
	hostileLogLineMax = 64 << 10
	// hostileLogLinesPerSecond bounds the guest log lines the host relays
	// a second, on average over the observation window.
	hostileLogLinesPerSecond = 500
	// hostileKillTimeout is [agent] kill_timeout: how long the host waits
	// for the guest to report a SIGKILLed process gone.
	hostileKillTimeout = 5 * time.Second
	// hostileSlack is what TCG adds on top of a configured timeout before
	// the host's reaction shows in ctr (the ctr calls themselves).
	hostileSlack = 30 * time.Second
	// hostileOOMEventsMax bounds the TaskOOM events containerd sees for
	// one container over the observation window while the guest reports
	// OOM kills without pause.
	hostileOOMEventsMax = 100
	// hostileWatch is how long each case lets the guest misbehave.
	hostileWatch = 20 * time.Second
)

// Values the hostile agent forges (internal/agent/hostile.go).
const (
	hostileForgedLine = "level=error msg=hostile-forged-line"
	hostileForeignID  = "hostile-foreign-container"
)

// hostileCase is one misbehaviour of the guest and what the host must do.
type hostileCase struct {
	name string
	// modes is the value of hull.hostile, given the started daemon (one
	// case forges containerd's PID).
	modes func(d *daemon) string
	run   func(t *testing.T, d *daemon, id string)
}

// TestHostileAgent runs the containerd cases against a guest whose agent
// misbehaves: each case boots one sandbox with the hostile agent in one
// mode and checks the host stays within its bounds, sees only the events
// it should, and leaves nothing behind after kill and delete.
func TestHostileAgent(t *testing.T) {
	assets := e2e.HostileImage(t, env.binDir, env.workDir)
	for _, version := range []string{"1.6", "2"} {
		t.Run("containerd-"+version, func(t *testing.T) {
			containerdPath, ctrPath := daemonBinaries(t, version)
			for _, c := range hostileCases {
				t.Run(c.name, func(t *testing.T) {
					id := "hostile-" + regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(c.name, "-")
					cgroupsBefore := cgroupsNamed(id)
					// Last, after the daemon and its shims are gone: a
					// case that failed may leave its cgroups.
					t.Cleanup(func() { removeCgroups(cgroupsNamed(id)) })
					o := daemonOptions{assetsDir: assets}
					d := startDaemonWith(t, containerdPath, ctrPath, o)
					o.kernelParams = []string{"hull.hostile=" + c.modes(d)}
					d.setHullConfig(t, o)
					d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
					defer func() {
						d.forget(t, id)
						d.checkClean(t)
						if left := cgroupsNamed(id); len(left) > len(cgroupsBefore) {
							t.Errorf("cgroups left behind: %v", left)
						}
					}()
					c.run(t, d, id)
				})
			}
		})
	}
}

func modes(m string) func(*daemon) string { return func(*daemon) string { return m } }

var hostileCases = []hostileCase{
	{"console flood", modes("console"), func(t *testing.T, d *daemon, id string) {
		time.Sleep(hostileWatch)
		logs := d.consoleLogs()
		if len(logs) == 0 {
			t.Fatalf("no console log under %s", d.stateRoot)
		}
		for dir, size := range logs {
			t.Logf("%s: console log files hold %d bytes after %s of flood", dir, size, hostileWatch)
			if size > hostileConsoleMax {
				t.Errorf("%s: console log files hold %d bytes after %s of console flood, bound %d", dir, size, hostileWatch, hostileConsoleMax)
			}
		}
		killAndDelete(t, d, id)
	}},
	{"forged log keys", modes("logkeys"), func(t *testing.T, d *daemon, id string) {
		time.Sleep(hostileWatch / 2)
		early := strings.Count(d.log.String(), "hostile forged keys")
		time.Sleep(hostileWatch / 2)
		checkShimRSS(t, d)
		if late := strings.Count(d.log.String(), "hostile forged keys"); late <= early {
			t.Errorf("the relay stopped: %d forged entries relayed after %s, still %d after %s (the guest sends 1 MiB lines among them)", early, hostileWatch/2, late, hostileWatch)
		}
		var relayed, long int
		var split, shadowed []string
		topLevel := regexp.MustCompile(`(^|\s)(sandbox=forged-sandbox|namespace=forged-namespace)`)
		for _, l := range strings.Split(d.log.String(), "\n") {
			if strings.Contains(l, "hostile forged keys") {
				relayed++
			}
			if strings.HasPrefix(strings.TrimSpace(l), hostileForgedLine) {
				split = append(split, l)
			}
			if topLevel.MatchString(l) {
				shadowed = append(shadowed, l)
			}
			if len(l) > hostileLogLineMax {
				long++
			}
		}
		if relayed == 0 {
			t.Fatal("no forged entry relayed at all: the case shows nothing")
		}
		if len(split) > 0 {
			t.Errorf("a forged key split the log: %d lines of their own read like %.300q", len(split), split[0])
		}
		if len(shadowed) > 0 {
			t.Errorf("guest fields shadow the host's sandbox/namespace fields (want them nested or guest.-prefixed) in %d lines like %.300q", len(shadowed), shadowed[0])
		}
		if long > 0 {
			t.Errorf("%d log lines over %d bytes", long, hostileLogLineMax)
		}
		killAndDelete(t, d, id)
	}},
	{"log flood", modes("logflood"), func(t *testing.T, d *daemon, id string) {
		before := strings.Count(d.log.String(), "hostile flood")
		start := time.Now()
		time.Sleep(hostileWatch)
		checkShimRSS(t, d)
		n := strings.Count(d.log.String(), "hostile flood") - before
		if n == 0 {
			t.Fatal("no flood line relayed at all: the case shows nothing")
		}
		if limit := int(time.Since(start).Seconds()+1) * hostileLogLinesPerSecond; n > limit {
			t.Errorf("%d guest log lines relayed in %s, bound %d", n, time.Since(start).Round(time.Second), limit)
		}
		killAndDelete(t, d, id)
	}},
	{"foreign OOM events", modes("oomforeign"), func(t *testing.T, d *daemon, id string) {
		events := d.events(t)
		time.Sleep(hostileWatch)
		if strings.Contains(events.String(), hostileForeignID) {
			t.Errorf("containerd saw an event for a container the guest does not own: %q", grepLines(events.String(), hostileForeignID))
		}
		if n := strings.Count(events.String(), "/tasks/oom"); n > 0 {
			t.Errorf("containerd saw %d TaskOOM events, none of them real: %q", n, grepLines(events.String(), "/tasks/oom"))
		}
		killAndDelete(t, d, id)
	}},
	{"OOM flood", modes("oomflood"), func(t *testing.T, d *daemon, id string) {
		events := d.events(t)
		time.Sleep(hostileWatch)
		n := strings.Count(events.String(), "/tasks/oom")
		if n == 0 {
			t.Fatal("no TaskOOM event at all: the case shows nothing")
		}
		if n > hostileOOMEventsMax {
			t.Errorf("containerd saw %d TaskOOM events in %s, bound %d", n, hostileWatch, hostileOOMEventsMax)
		}
		killAndDelete(t, d, id)
	}},
	{"stream flood", modes("streams"), func(t *testing.T, d *daemon, id string) {
		time.Sleep(hostileWatch)
		checkShimRSS(t, d)
		if out := d.mustCtr(t, "task", "exec", "--exec-id", "e1", id, "echo", "still serving"); out != "still serving\n" {
			t.Errorf("exec during the stream flood: got %q", out)
		}
		killAndDelete(t, d, id)
	}},
	{"exit never reported", modes("nowait"), func(t *testing.T, d *daemon, id string) {
		d.mustCtr(t, "task", "kill", "-s", "KILL", id)
		start := time.Now()
		waitFor(t, hostileKillTimeout+hostileSlack, func() bool { return taskStatus(t, d, id) == "STOPPED" },
			"the host to declare the SIGKILLed task stopped although the guest never reports the exit", nil)
		t.Logf("stopped after %s", time.Since(start).Round(100*time.Millisecond))
		deleteWithin(t, d, id)
	}},
	{"RemoveContainer refused", modes("noremove"), func(t *testing.T, d *daemon, id string) {
		killAndDelete(t, d, id)
	}},
	{"PID 1 reported", modes("pid:1"), checkPIDs(1)},
	{"PID 0 reported", modes("pid:0"), checkPIDs(0)},
	{"containerd's PID reported", func(d *daemon) string { return fmt.Sprintf("pid:%d", d.cmd.Process.Pid) }, func(t *testing.T, d *daemon, id string) {
		checkPIDs(uint32(d.cmd.Process.Pid))(t, d, id)
		if err := d.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			t.Errorf("containerd gone after the task was killed: %v", err)
		}
	}},
}

// checkPIDs returns a case that sees what PID containerd is told for the
// task while the guest reports forged for every process: a host process
// (never forged, 0 or 1), and killing the task signals no host process.
func checkPIDs(forged uint32) func(*testing.T, *daemon, string) {
	return func(t *testing.T, d *daemon, id string) {
		pid := taskPID(t, d, id)
		if pid == forged || pid <= 1 {
			t.Errorf("containerd was told PID %d for the task; the guest forged %d", pid, forged)
		}
		killAndDelete(t, d, id)
		if err := syscall.Kill(1, 0); err != nil {
			t.Errorf("host PID 1: %v", err)
		}
	}
}

// killAndDelete kills the task with SIGKILL and force-deletes it and the
// container, each within the kill timeout plus TCG's slack.
func killAndDelete(t *testing.T, d *daemon, id string) {
	t.Helper()
	d.mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitFor(t, hostileKillTimeout+hostileSlack, func() bool { return taskStatus(t, d, id) == "STOPPED" },
		"the SIGKILLed task to stop", nil)
	deleteWithin(t, d, id)
}

// deleteWithin force-deletes the task and deletes the container, each
// within the kill timeout plus TCG's slack.
func deleteWithin(t *testing.T, d *daemon, id string) {
	t.Helper()
	for _, args := range [][]string{{"task", "delete", "-f", id}, {"container", "delete", id}} {
		start := time.Now()
		out, errOut, code := d.ctr(t, args...)
		if took := time.Since(start); code != 0 || took > hostileKillTimeout+hostileSlack {
			t.Errorf("ctr %s: exit %d after %s: %s%s", strings.Join(args, " "), code, took.Round(100*time.Millisecond), out, errOut)
		}
	}
}

// taskStatus is the task's status in ctr task ls, or "" without one.
func taskStatus(t *testing.T, d *daemon, id string) string {
	out, _, _ := d.ctr(t, "task", "ls")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// taskPID is the task's PID in ctr task ls.
func taskPID(t testing.TB, d *daemon, id string) uint32 {
	t.Helper()
	out := d.mustCtr(t, "task", "ls")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == id {
			n, err := strconv.ParseUint(f[1], 10, 32)
			if err != nil {
				t.Fatalf("task ls: PID %q: %v", f[1], err)
			}
			return uint32(n)
		}
	}
	t.Fatalf("task ls has no %s: %q", id, out)
	return 0
}

// checkShimRSS fails the test when a shim of the daemon is over
// hostileShimRSSMax.
func checkShimRSS(t *testing.T, d *daemon) {
	t.Helper()
	pid := pidOf("containerd-shim-hull-v2", d.address)
	if pid == 0 {
		t.Fatal("no shim running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			kib, _ := strconv.Atoi(f[1])
			t.Logf("shim RSS %d KiB", kib)
			if kib<<10 > hostileShimRSSMax {
				t.Errorf("shim RSS %d KiB, bound %d KiB", kib, hostileShimRSSMax>>10)
			}
			return
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
}

// consoleLogs returns, for each directory under the daemon's hull state
// root that holds a console log, the bytes of its console log files (the
// log and its rotated predecessors, console.log*).
func (d *daemon) consoleLogs() map[string]int64 {
	logs := map[string]int64{}
	_ = filepath.WalkDir(d.stateRoot, func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() && strings.HasPrefix(de.Name(), "console.log") {
			if fi, err := de.Info(); err == nil {
				logs[filepath.Dir(p)] += fi.Size()
			}
		}
		return nil
	})
	return logs
}

// events runs ctr events against the daemon until the test ends.
func (d *daemon) events(t *testing.T) *e2e.SyncBuffer {
	t.Helper()
	var out e2e.SyncBuffer
	cmd := exec.Command(d.ctrPath, "-a", d.address, "events")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return &out
}

// cgroupsNamed lists the cgroup directories, two levels below each
// controller of the host, whose name contains id.
func cgroupsNamed(id string) []string {
	var found []string
	for _, pattern := range []string{"/sys/fs/cgroup/*/*/*", "/sys/fs/cgroup/*/*"} {
		dirs, _ := filepath.Glob(pattern)
		for _, dir := range dirs {
			if strings.Contains(filepath.Base(dir), id) {
				found = append(found, dir)
			}
		}
	}
	return found
}

// removeCgroups removes the cgroup directories dirs and those below them,
// deepest first; best effort, as a busy cgroup stays.
func removeCgroups(dirs []string) {
	for _, root := range dirs {
		var all []string
		_ = filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		for i := len(all) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(all[i])
		}
	}
}

// grepLines returns the lines of s that contain sub, at most five.
func grepLines(s, sub string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && len(out) < 5 {
			out = append(out, l)
		}
	}
	return out
}
