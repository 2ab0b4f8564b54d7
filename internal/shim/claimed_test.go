package shim

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pidfdOf opens a pidfd of the child cmd, as the hand-over does of the
// warm shim while it answers.
func pidfdOf(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestSettleClaimed checks what Start does with a claimed shim: it keeps
// one whose OOM score was set, and kills (and waits for) one whose score
// could not be set, so that a cold server takes the socket instead of the
// pod's start failing.
func TestSettleClaimed(t *testing.T) {
	for _, tc := range []struct {
		name       string
		adjustErr  error
		wantServed bool
	}{
		{"score set: the claimed shim serves", nil, true},
		{"score not set: the claimed shim is dropped", errors.New("permission denied"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				if err := <-exited; err != nil {
					t.Logf("sleep ended: %v", err)
				}
			})
			var adjusted int
			served, err := settleClaimed(pidfdOf(t, cmd), func(pid int) error {
				adjusted = pid
				return tc.adjustErr
			})
			if err != nil {
				t.Fatal(err)
			}
			if served != tc.wantServed || adjusted != cmd.Process.Pid {
				t.Fatalf("served %v (adjusted pid %d), want %v (pid %d)", served, adjusted, tc.wantServed, cmd.Process.Pid)
			}
			if served {
				select {
				case err := <-exited:
					t.Fatalf("the claimed shim that serves exited: %v", err)
				case <-time.After(100 * time.Millisecond):
				}
				return
			}
			// Dropped: it was dead when settleClaimed returned.
			select {
			case err := <-exited:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("the dropped shim ended with %v, want SIGKILL", err)
				}
				exited <- err
			case <-time.After(5 * time.Second):
				t.Fatal("the dropped shim still runs")
			}
		})
	}
	t.Run("a claimed shim that exits while settled is dropped", func(t *testing.T) {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		served, err := settleClaimed(pidfdOf(t, cmd), func(int) error {
			// It dies while its score is set; the score is set all
			// the same (or on a process that took its PID).
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil
		})
		if served || err != nil {
			t.Fatalf("settleClaimed = %v, %v, want false, nil", served, err)
		}
	})
	t.Run("a claimed shim gone already is dropped", func(t *testing.T) {
		cmd := exec.Command("true")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		fd := pidfdOf(t, cmd)
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		adjusted := false
		served, err := settleClaimed(fd, func(int) error { adjusted = true; return nil })
		if served || err != nil || adjusted {
			t.Fatalf("settleClaimed = %v, %v (score set: %v), want false, nil, not set", served, err, adjusted)
		}
	})
	t.Run("a claimed shim reaped and its PID taken again: the new process is untouched", func(t *testing.T) {
		gone := exec.Command("true")
		if err := gone.Start(); err != nil {
			t.Fatal(err)
		}
		fd := pidfdOf(t, gone)
		if err := gone.Wait(); err != nil {
			t.Fatal(err)
		}
		next := reusePID(t, gone.Process.Pid)
		var adjusted []int
		served, err := settleClaimed(fd, func(pid int) error { adjusted = append(adjusted, pid); return errors.New("not settable") })
		if served || err != nil {
			t.Fatalf("settleClaimed = %v, %v, want false, nil", served, err)
		}
		if len(adjusted) != 0 {
			t.Errorf("the OOM score of PID %v was set: that is another process now", adjusted)
		}
		if err := next.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("the process that took PID %d again: %v", next.Process.Pid, err)
		}
	})
}

// reusePID starts `sleep 60` with PID pid (free again), killed at the
// test's end; it needs root (ns_last_pid).
func reusePID(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	for range 50 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("setting the next PID needs root: %v", err)
		}
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			return cmd
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	t.Fatalf("no process got PID %d again in 50 tries", pid)
	return nil
}

// TestKillAndWait: killAndWait acts on the process its pidfd holds: it
// kills and awaits a running one, and when that one is gone and its PID
// taken by another process, it signals nothing.
func TestKillAndWait(t *testing.T) {
	start := func(t *testing.T, name string, args ...string) (*exec.Cmd, int) {
		t.Helper()
		cmd := exec.Command(name, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Our child: it cannot have been reaped yet.
		fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Close(fd) })
		return cmd, fd
	}
	t.Run("a running process is killed and awaited", func(t *testing.T) {
		cmd, fd := start(t, "sleep", "60")
		if err := killAndWait(fd, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		// It exited already: its status is there to reap.
		var ws unix.WaitStatus
		if pid, err := unix.Wait4(cmd.Process.Pid, &ws, unix.WNOHANG, nil); pid != cmd.Process.Pid || err != nil || ws.Signal() != unix.SIGKILL {
			t.Fatalf("wait4 = %d (%v), status %v, want the process killed by SIGKILL", pid, err, ws)
		}
	})
	t.Run("a PID taken again is not signalled", func(t *testing.T) {
		gone, fd := start(t, "true")
		if err := gone.Wait(); err != nil {
			t.Fatal(err)
		}
		pid := gone.Process.Pid
		next := reusePID(t, pid)
		if err := killAndWait(fd, time.Second); err != nil {
			t.Fatalf("killAndWait of a process gone: %v, want nil", err)
		}
		if err := next.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("the process that took PID %d again: %v", pid, err)
		}
		var ws unix.WaitStatus
		if p, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); p != 0 {
			t.Fatalf("the process that took PID %d again ended: %v", pid, ws)
		}
	})
}
