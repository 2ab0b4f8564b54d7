package shim

import (
	"errors"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

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
			served, err := settleClaimed(cmd.Process.Pid, func(pid int) error {
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
	t.Run("a claimed shim gone already is dropped", func(t *testing.T) {
		cmd := exec.Command("true")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		served, err := settleClaimed(cmd.Process.Pid, func(int) error { return errors.New("no such process") })
		if served || err != nil {
			t.Fatalf("settleClaimed = %v, %v, want false, nil", served, err)
		}
	})
}
