package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/procfs"
)

// Process is a process of the host.
type Process struct {
	Pid     int
	Cmdline string
}

func (p Process) String() string { return fmt.Sprintf("process %d: %s", p.Pid, p.Cmdline) }

// Processes lists the host's processes with a command line, the test's
// own left out.
func Processes() []Process {
	var ps []Process
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(b) == 0 {
			continue
		}
		ps = append(ps, Process{Pid: pid, Cmdline: strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))})
	}
	return ps
}

// Alive tells whether pid runs (a zombie does not count).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f, err := procfs.StatFields(b)
	return err != nil || f[0] != "Z"
}

// ParentPid is the parent of pid, 0 when pid is gone.
func ParentPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f, err := procfs.StatFields(b)
	if err != nil || len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// OwnCgroups moves pid into cgroups of its own named <prefix>-<pid>, in the
// memory and pids hierarchies (cgroup v1) or the unified one, as a
// service unit has, and returns their directories (the caller removes
// them once pid is gone).
func OwnCgroups(pid int, prefix string) ([]string, error) {
	var dirs []string
	for _, h := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		d := filepath.Join(h, fmt.Sprintf("%s-%d", prefix, pid))
		if err := os.Mkdir(d, 0o755); err != nil { //nolint:gosec // G301: a cgroup directory
			return dirs, err
		}
		dirs = append(dirs, d)
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil { //nolint:gosec // G306: a cgroup file
			return dirs, err
		}
		if h == "/sys/fs/cgroup" {
			break // unified: the one hierarchy
		}
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("no cgroup hierarchy to put process %d in", pid)
	}
	return dirs, nil
}

// CLITimeout bounds one run of a container CLI (docker, podman, nerdctl).
const CLITimeout = 4 * time.Minute

// RunCLI runs the command that cmd makes with a context of CLITimeout, and
// returns its stdout, stderr and exit status (-1 when it did not exit).
func RunCLI(cmd func(context.Context) *exec.Cmd) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), CLITimeout)
	defer cancel()
	c := cmd(ctx)
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	if err := c.Run(); err != nil {
		code = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
	}
	return out.String(), errOut.String(), code
}

// MustRunCLI runs the CLI name through run with args, and fails t unless
// it exits 0; it returns the stdout.
func MustRunCLI(t testing.TB, name string, run func(...string) (string, string, int), args ...string) string {
	t.Helper()
	out, errOut, code := run(args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d: %s%s", name, strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// SmapsRollup returns a process's Rss and Pss in KiB
// (/proc/<pid>/smaps_rollup); zeros when it cannot be read.
func SmapsRollup(pid int) (rss, pss uint64) {
	b, err := procfs.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid), 1<<16)
	if err != nil {
		return 0, 0
	}
	m := procfs.ParseKB(b)
	return m["Rss"] >> 10, m["Pss"] >> 10
}
