package containerd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// faultBound is how long a start or a delete met by a fault may take to
// fail or finish: the boot wait and dial timeout of an overloaded host
// stay well below it.
const faultBound = 4 * time.Minute

// TestFaults kills each host part of a pod with SIGKILL at boot and while
// its container runs (containerd 2; the "qemu killed" and "shim killed"
// cases of TestContainerd cover a running task on both versions): the
// start fails with an error, or the task stops, within faultBound, and
// after the delete nothing is left (daemon.checkClean: no qemu,
// virtiofsd, shim, mount or state directory).
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
		{"qemu killed during delete", func(t *testing.T, d *daemon, id string) {
			d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
			pid := pidOf("qemu-system", d.stateRoot)
			if pid == 0 {
				t.Fatal("no qemu process found")
			}
			done := make(chan string, 1)
			go func() {
				_, errOut, code := d.ctr(t, "task", "delete", "-f", id)
				done <- fmt.Sprintf("exit %d %s", code, errOut)
			}()
			time.Sleep(200 * time.Millisecond)
			_ = syscall.Kill(pid, syscall.SIGKILL) // it may be gone already
			select {
			case r := <-done:
				t.Logf("task delete -f: %s", r)
			case <-time.After(faultBound):
				t.Fatalf("task delete -f did not end within %s", faultBound)
			}
			d.ctr(t, "task", "delete", "-f", id)
			d.mustCtr(t, "container", "delete", id)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer d.checkClean(t)
			id := "fault-" + strings.ReplaceAll(c.name, " ", "-")
			defer d.forget(t, id)
			c.run(t, d, id)
		})
	}
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
