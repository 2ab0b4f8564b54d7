package containerd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// faultBound is how long a start or a delete met by a fault may take to
// fail or finish: the boot wait and dial timeout of an overloaded host
// stay well below it.
const faultBound = 4 * time.Minute

// TestFaults kills each host part of a pod with SIGKILL at boot and while
// its container runs (containerd 2; the "qemu killed" and "shim killed"
// cases of TestContainerd cover a running task on both versions): the
// start fails with an error, or the task stops, within faultBound, and
// after the delete nothing is left (daemon.checkClean with the task: no
// qemu, virtiofsd, shim, mount, state directory, shim socket or cgroup).
func TestFaults(t *testing.T) {
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemon(t, containerdPath, ctrPath)
	for _, c := range []struct {
		name string
		run  func(*testing.T, *daemon, string)
	}{
		{"qemu killed at boot", func(t *testing.T, d *daemon, id string) {
			killAtBoot(t, d, id, func() int { return pidOf("qemu-system", d.stateRoot) })
		}},
		{"virtiofsd killed at boot", func(t *testing.T, d *daemon, id string) {
			killAtBoot(t, d, id, func() int { return pidOf("virtiofsd", d.stateRoot) })
		}},
		{"shim killed at boot", func(t *testing.T, d *daemon, id string) {
			// Once QEMU runs, the shim is inside the start; containerd
			// runs `shim delete`, which stops what the shim's record names.
			killAtBoot(t, d, id, func() int {
				if pidOf("qemu-system", d.stateRoot) == 0 {
					return 0
				}
				return pidOf("containerd-shim-hull-v2", d.address)
			})
		}},
		{"shim killed once virtiofsd runs", func(t *testing.T, d *daemon, id string) {
			// Before the VM: the sandbox's cgroup, storage and
			// virtiofsd exist, and the record names them.
			killAtBoot(t, d, id, func() int {
				if pidOf("virtiofsd", d.stateRoot) == 0 {
					return 0
				}
				return pidOf("containerd-shim-hull-v2", d.address)
			})
		}},
		{"virtiofsd killed while the container runs", func(t *testing.T, d *daemon, id string) {
			d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
			pid := pidOf("virtiofsd", d.stateRoot)
			if pid == 0 {
				t.Fatal("no virtiofsd process found")
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			d.mustCtr(t, "task", "kill", "-s", "KILL", id)
			waitStatus(t, d, id, "STOPPED")
			d.mustCtr(t, "task", "delete", id)
			d.mustCtr(t, "container", "delete", id)
			if took := time.Since(start); took > faultBound {
				t.Errorf("kill and delete took %s", took)
			}
		}},
		{"containerd restarted while the container runs", func(t *testing.T, d *daemon, id string) {
			d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sh", "-c", "echo before > /tmp/f; sleep 600")
			d.restart(t)
			waitStatus(t, d, id, "RUNNING")
			if out := d.mustCtr(t, "task", "exec", "--exec-id", "after", id, "cat", "/tmp/f"); out != "before\n" {
				t.Errorf("exec after the restart: %q, want %q", out, "before\n")
			}
			d.mustCtr(t, "task", "kill", "-s", "KILL", id)
			waitStatus(t, d, id, "STOPPED")
			d.mustCtr(t, "task", "delete", id)
			d.mustCtr(t, "container", "delete", id)
		}},
		{"agent sent SIGKILL from the debug console", func(t *testing.T, d *daemon, id string) {
			// The agent is the guest's PID 1: the guest kernel never
			// delivers SIGKILL to it, so the pod lives on.
			cfg := filepath.Join(d.dir, "hull-agent-kill.toml")
			body := fmt.Sprintf("[image]\nassets_dir = %q\n[agent]\ndebug_console = true\n[runtime]\nstate_dir = %q\n", debugImage(t), d.stateRoot)
			if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			d.mustCtr(t, "run", "-d", "--runtime", runtimeName, "--runtime-config-path", cfg, imageName, id, "sleep", "600")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfg, "exec", id)
			cmd.Stdin = strings.NewReader("kill -KILL 1; sleep 2; echo agent-$(cat /proc/1/comm)\n")
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "agent-") {
				t.Fatalf("hull exec: %v; output %q", err, out)
			}
			if out := d.mustCtr(t, "task", "exec", "--exec-id", "after", id, "echo", "alive"); out != "alive\n" {
				t.Errorf("exec after the signals: %q", out)
			}
			d.mustCtr(t, "task", "kill", "-s", "KILL", id)
			waitStatus(t, d, id, "STOPPED")
			d.mustCtr(t, "task", "delete", id)
			d.mustCtr(t, "container", "delete", id)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := "fault-" + strings.ReplaceAll(c.name, " ", "-")
			removeStaleCgroups(t, id)
			defer d.checkClean(t, id)
			defer d.forget(t, id)
			c.run(t, d, id)
		})
	}
}

// deleteBound is how long a delete met by a fault may take to end: the
// guest's kill_timeout (5s) to remove the container, then the shim's
// bound on the sandbox's release (1 min), with room for a loaded host.
const deleteBound = 2 * time.Minute

// victims are the host processes of a pod a delete's fault kills, each
// found by its command line.
var victims = []struct {
	name string
	pid  func(*daemon) int
}{
	{"qemu", func(d *daemon) int { return pidOf("qemu-system", d.stateRoot) }},
	{"virtiofsd", func(d *daemon) int { return pidOf("virtiofsd", d.stateRoot) }},
	{"shim", func(d *daemon) int { return pidOf("containerd-shim-hull-v2", d.address) }},
}

// TestFaultsDuringDelete kills QEMU, virtiofsd and the shim with SIGKILL
// at each stage of a task's delete, each stage a point the test sees
// rather than a delay:
//
//   - the guest took the stop: the container's SIGTERM trap wrote its
//     mark in a host directory shared with it, and the container still
//     runs;
//   - the delete waits on the guest: the guest is frozen (QEMU stopped
//     with SIGSTOP) when the delete of the stopped task goes out, and the
//     delete has not ended 3 s later (the shim waits for the guest to
//     remove the container); QEMU is let go once the victim is dead;
//   - the delete powered the VM off: QEMU exited during the delete (the
//     agent's shutdown), and the shim is releasing the rest (virtiofsd
//     ends with QEMU: only the shim is killed; a try whose shim ended its
//     teardown before the kill is repeated, up to three in all).
//
// The delete (or, after the first stage, the forced delete that follows
// the stop) must end within deleteBound, with an error that says what
// failed when it fails; `container delete` then succeeds, and nothing is
// left (daemon.checkClean with the task: processes, mounts, state
// directory, shim socket, cgroups).
func TestFaultsDuringDelete(t *testing.T) {
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemon(t, containerdPath, ctrPath)
	type stage struct {
		name string
		// run brings task id to the stage, kills the victim (kill)
		// there and checks the delete's end (checkDeleteEnd, with
		// shimKilled).
		run func(t *testing.T, id string, kill func(), shimKilled bool)
		// shimOnly: at this stage only the shim is left to kill
		// (virtiofsd ends with QEMU).
		shimOnly bool
	}
	stages := []stage{
		{"once the guest took the stop", func(t *testing.T, id string, kill func(), shimKilled bool) {
			stopTaken(t, d, id)
			kill()
			finishDelete(t, d, id, shimKilled, "task", "delete", "-f", id)
		}, false},
		{"while the delete waits on the guest", func(t *testing.T, id string, kill func(), shimKilled bool) {
			runStopped(t, d, id)
			vm := pidOf("qemu-system", d.stateRoot)
			if err := syscall.Kill(vm, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = syscall.Kill(vm, syscall.SIGCONT) }() // it may be gone
			done := deleteInBackground(t, d, id)
			select {
			case r := <-done:
				t.Fatalf("the delete ended (%s) while the guest was frozen", r)
			case <-time.After(3 * time.Second):
			}
			kill()
			_ = syscall.Kill(vm, syscall.SIGCONT) // it may be gone
			waitDelete(t, d, id, done, shimKilled)
		}, false},
		{"once the delete powered the VM off", func(t *testing.T, id string, _ func(), shimKilled bool) {
			// The teardown after QEMU's exit may take only
			// milliseconds: the shim, found before the delete, is
			// killed as soon as QEMU is seen gone, and a try whose shim
			// had already ended is done again, with a new task.
			for try := 1; ; try++ {
				tid := fmt.Sprintf("%s-%d", id, try)
				runStopped(t, d, tid)
				vm := pidOf("qemu-system", d.stateRoot)
				shim := pidOf("containerd-shim-hull-v2", d.address)
				checkSocketOwnOnly(t, d, tid, shim)
				done := deleteInBackground(t, d, tid)
				deadline := time.Now().Add(deleteBound)
				for e2e.Alive(vm) && time.Now().Before(deadline) {
					time.Sleep(2 * time.Millisecond)
				}
				if e2e.Alive(vm) {
					t.Fatalf("QEMU still runs %s after the delete went out", deleteBound)
				}
				if err := syscall.Kill(shim, syscall.SIGKILL); err == nil {
					t.Logf("killed shim (%d)", shim)
					waitDelete(t, d, tid, done, shimKilled)
					return
				}
				waitDelete(t, d, tid, done, false)
				if try == 3 {
					t.Fatal("three times the shim ended its teardown before it could be killed")
				}
				t.Logf("try %d: the shim ended its teardown before the kill; again", try)
			}
		}, true},
	}
	for i, st := range stages {
		for _, v := range victims {
			if st.shimOnly && v.name != "shim" {
				continue
			}
			name := v.name + " killed " + st.name
			t.Run(name, func(t *testing.T) {
				// Short: the pod's hostname is the ID with its namespace.
				id := fmt.Sprintf("delete-%s-%d", v.name, i+1)
				ids := []string{id}
				if st.shimOnly {
					ids = []string{id + "-1", id + "-2", id + "-3"}
				}
				for _, id := range ids {
					removeStaleCgroups(t, id)
					defer d.checkClean(t, id)
					defer d.forget(t, id)
				}
				st.run(t, id, func() {
					pid := v.pid(d)
					if pid == 0 {
						t.Fatalf("no %s process found", v.name)
					}
					if v.name == "shim" {
						checkSocketOwnOnly(t, d, id, pid)
					}
					if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
						t.Fatalf("killing %s (%d): %v", v.name, pid, err)
					}
					t.Logf("killed %s (%d)", v.name, pid)
				}, v.name == "shim")
			})
		}
	}
}

// stopTaken runs task id with a container that traps SIGTERM, sends it
// SIGTERM (a stop's first step) once the trap is set, and waits until the
// guest has taken it: the trap's mark in a host directory bound into the
// container. The container keeps running.
func stopTaken(t *testing.T, d *daemon, id string) {
	t.Helper()
	ack, err := os.MkdirTemp(d.dir, "ack")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(ack) })
	d.mustCtr(t, "run", "-d", "--runtime", runtimeName, "--mount", "type=bind,src="+ack+",dst=/ack,options=rbind:rw",
		imageName, id, "sh", "-c", `trap 'echo took > /ack/term' TERM; echo > /ack/up; while :; do sleep 1; done`)
	// The container's shell is its PID namespace's init: a signal it has
	// no handler for yet is dropped.
	waitFor(t, time.Minute, func() bool { return fileExists(filepath.Join(ack, "up")) }, "the container to trap SIGTERM", nil)
	d.mustCtr(t, "task", "kill", "-s", "TERM", id)
	waitFor(t, time.Minute, func() bool { return fileExists(filepath.Join(ack, "term")) }, "the guest to take the SIGTERM", nil)
}

// runStopped runs task id and kills it, leaving a stopped task whose
// delete is the next step.
func runStopped(t *testing.T, d *daemon, id string) {
	t.Helper()
	d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
	d.mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, d, id, "STOPPED")
}

// deleteResult is how a ctr command ended.
type deleteResult struct {
	code   int
	errOut string
	took   time.Duration
}

func (r deleteResult) String() string {
	return fmt.Sprintf("exit %d after %s: %s", r.code, r.took.Round(time.Millisecond), strings.TrimSpace(r.errOut))
}

// deleteInBackground starts `ctr task delete id`.
func deleteInBackground(t *testing.T, d *daemon, id string) <-chan deleteResult {
	done := make(chan deleteResult, 1)
	start := time.Now()
	go func() {
		_, errOut, code := d.ctr(t, "task", "delete", id)
		done <- deleteResult{code: code, errOut: errOut, took: time.Since(start)}
	}()
	return done
}

// waitDelete waits for the delete done reports and checks its end.
func waitDelete(t *testing.T, d *daemon, id string, done <-chan deleteResult, shimKilled bool) {
	t.Helper()
	select {
	case r := <-done:
		checkDeleteEnd(t, d, id, r, shimKilled)
	case <-time.After(deleteBound):
		t.Fatalf("the delete did not end within %s", deleteBound)
	}
}

// finishDelete runs a delete (args) and checks its end.
func finishDelete(t *testing.T, d *daemon, id string, shimKilled bool, args ...string) {
	t.Helper()
	start := time.Now()
	_, errOut, code := d.ctr(t, args...)
	checkDeleteEnd(t, d, id, deleteResult{code: code, errOut: errOut, took: time.Since(start)}, shimKilled)
}

// checkDeleteEnd checks a delete's end: within deleteBound. With QEMU or
// virtiofsd killed, it succeeds: the shim lives and sees the task's
// process gone with its VM. With the shim killed, the delete in flight
// may fail (the connection ends; the task may already be gone), saying
// why. After a failure, the task is gone or a forced delete removes it
// (as the kubelet's retry would); then the container's delete succeeds.
func checkDeleteEnd(t *testing.T, d *daemon, id string, r deleteResult, shimKilled bool) {
	t.Helper()
	t.Logf("delete: %s", r)
	if r.took > deleteBound {
		t.Errorf("the delete took %s, more than %s", r.took, deleteBound)
	}
	if r.code != 0 {
		if !shimKilled {
			t.Errorf("the delete failed although its shim lives: %s", r)
		}
		if strings.TrimSpace(r.errOut) == "" {
			t.Errorf("the delete failed (exit %d) without saying why", r.code)
		}
		if _, errOut, code := d.ctr(t, "task", "delete", "-f", id); code != 0 && !strings.Contains(errOut, "not found") {
			t.Errorf("the forced delete after a failed one: exit %d: %s", code, errOut)
		}
	}
	d.mustCtr(t, "container", "delete", id)
}

// killAtBoot starts task id and sends SIGKILL to the process pidOf finds
// as soon as it appears: the start must fail, with an error, within
// faultBound.
func killAtBoot(t *testing.T, d *daemon, id string, pidOf func() int) {
	t.Helper()
	type result struct {
		errOut string
		code   int
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		_, errOut, code := d.ctr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		done <- result{errOut, code}
	}()
	killed := 0
	for killed == 0 {
		select {
		case r := <-done:
			t.Fatalf("the start ended (exit %d, %q) before the process to kill was seen", r.code, r.errOut)
		case <-time.After(20 * time.Millisecond):
		}
		if pid := pidOf(); pid != 0 {
			if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
				killed = pid
			}
		}
	}
	select {
	case r := <-done:
		t.Logf("start failed after %s: exit %d: %s", time.Since(start).Round(time.Millisecond), r.code, strings.TrimSpace(r.errOut))
		if r.code == 0 {
			t.Errorf("the start succeeded although process %d was killed at boot", killed)
		}
	case <-time.After(faultBound):
		t.Fatalf("the start did not end within %s after process %d was killed", faultBound, killed)
	}
}

// removeStaleCgroups removes the empty cgroups named after task id that an
// earlier run left, so that the case's leftover check sees only its own.
func removeStaleCgroups(t *testing.T, id string) {
	t.Helper()
	if stale := cgroupsNamed(id); len(stale) > 0 {
		t.Logf("removing cgroups an earlier run left: %v", stale)
		removeCgroups(stale)
	}
}

// checkSocketOwnOnly fails when a process other than the shim of task id
// holds the shim's listening socket (/run/containerd/s/...): a child that
// inherited it keeps a killed shim's socket accepting connections while it
// lives, and `shim delete` then takes the shim for alive and leaves its
// socket.
func checkSocketOwnOnly(t *testing.T, d *daemon, id string, shim int) {
	t.Helper()
	path := e2e.ShimSocket(d.address, ctrNamespace, id)
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	var inode string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 8 && f[7] == path {
			inode = f[6]
		}
	}
	if inode == "" {
		t.Fatalf("no listening socket %s", path)
	}
	want := "socket:[" + inode + "]"
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == shim {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == want {
				t.Errorf("process %d (%s) holds the shim's socket %s (fd %s)", pid, processName(pid), path, fd.Name())
			}
		}
	}
}
