package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// TestCleanupFrozenRuntime freezes a `hull run` (SIGSTOP: its QEMU and
// virtiofsd live on, unlike after a kill, where the kernel ends them) and
// has sandbox.Cleanup end them from the sandbox record: by recorded PID and
// start time, the virtiofsd helper with its group, with nothing left
// mounted and the state directory gone.
func TestCleanupFrozenRuntime(t *testing.T) {
	c := containerConfig(t)
	cfgPath := writeHullConfig(t, c)
	bundle, _ := busyboxBundle(t, "sh", "-c", "echo started; sleep 1000")
	ctx := withTimeout(t, 3*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfgPath, "run", "--bundle", bundle, "--id", "frozen")
	var stdout e2e.SyncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
		_ = cmd.Wait()
	}()
	stdout.WaitFor(t, "started", time.Minute)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	dir := sandbox.StateDir(c.Runtime.StateDir, "frozen")
	b, err := os.ReadFile(filepath.Join(dir, "sandbox.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		VMPID             int    `json:"vm_pid"`
		VMStartTime       uint64 `json:"vm_start_time"`
		VirtiofsPID       int    `json:"virtiofsd_pid"`
		VirtiofsStartTime uint64 `json:"virtiofsd_start_time"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	procs := []child.Process{{PID: rec.VMPID, StartTime: rec.VMStartTime}, {PID: rec.VirtiofsPID, StartTime: rec.VirtiofsStartTime}}
	for _, p := range procs {
		if !p.Running() {
			t.Fatalf("recorded process %+v does not run (record %s)", p, b)
		}
	}
	if err := sandbox.Cleanup(context.Background(), c.Runtime.StateDir, "frozen"); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	for _, p := range procs {
		if p.Running() {
			t.Errorf("recorded process %d still runs after the cleanup", p.PID)
		}
	}
	if left := pidsMentioning(dir); len(left) > 0 {
		t.Errorf("processes of the sandbox left: %v", left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory after the cleanup: %v", err)
	}
}

// pidsMentioning lists the live processes whose command line names dir
// (a test's check; the runtime itself never looks for processes so).
func pidsMentioning(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		if p, err := child.Identify(pid); err == nil && p.Running() {
			pids = append(pids, pid)
		}
	}
	return pids
}
