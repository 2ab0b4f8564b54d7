package child

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestTailBuffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		max    int
		want   string
	}{
		{"under the limit", []string{"ab", "cd"}, 8, "abcd"},
		{"over the limit keeps the end", []string{"abcdef", "gh"}, 4, "efgh"},
		{"one large write", []string{"0123456789"}, 3, "789"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &TailBuffer{Max: tc.max}
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if got := b.String(); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestStart(t *testing.T) {
	out := &TailBuffer{Max: 64}
	cmd := exec.Command("sh", "-c", "echo hello; exit 3")
	cmd.Stdout = out
	done := make(chan *os.ProcessState, 1)
	if err := Start(cmd, func(ps *os.ProcessState, _ error) { done <- ps }); err != nil {
		t.Fatal(err)
	}
	if !cmd.SysProcAttr.Setpgid || cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL {
		t.Errorf("SysProcAttr %+v lacks Setpgid or Pdeathsig", cmd.SysProcAttr)
	}
	select {
	case ps := <-done:
		if ps.ExitCode() != 3 {
			t.Errorf("exit code %d, want 3", ps.ExitCode())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exited was not called")
	}
	if !strings.Contains(out.String(), "hello") {
		t.Errorf("output %q", out.String())
	}
	if err := Start(exec.Command("/no/such/program"), func(*os.ProcessState, error) { t.Error("exited called for a process that never started") }); err == nil {
		t.Error("starting a missing program succeeded")
	}
}

// TestStartPrepared checks that what prepare sets on the forking thread
// (no_new_privs here) reaches the child and does not stay in this process,
// and that a failing prepare starts nothing.
func TestStartPrepared(t *testing.T) {
	out := &TailBuffer{Max: 256}
	cmd := exec.Command("grep", "NoNewPrivs", "/proc/self/status")
	cmd.Stdout = out
	done := make(chan struct{})
	prepare := func() error { return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }
	if err := StartPrepared(cmd, prepare, func(*os.ProcessState, error) { close(done) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("exited was not called")
	}
	if !strings.Contains(out.String(), "NoNewPrivs:\t1") {
		t.Errorf("child status %q: want NoNewPrivs 1", out.String())
	}
	// The prepared thread (never the main one) exits after exited
	// returns; give it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tainted := 0
		tasks, _ := filepath.Glob("/proc/self/task/*/status")
		for _, p := range tasks {
			if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), "NoNewPrivs:\t1") {
				tainted++
			}
		}
		if tainted == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d threads of the test process still have no_new_privs", tainted)
		}
		time.Sleep(10 * time.Millisecond)
	}

	boom := errors.New("boom")
	err := StartPrepared(exec.Command("true"), func() error { return boom }, func(*os.ProcessState, error) {
		t.Error("exited called for a process that never started")
	})
	if !errors.Is(err, boom) {
		t.Errorf("got %v, want the prepare error", err)
	}
}

// TestStartIdentified checks that the identity comes from the child itself,
// even for a child that exits at once (read before it is reaped).
func TestStartIdentified(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"running", []string{"sleep", "5"}},
		{"exits at once", []string{"true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan struct{})
			cmd := exec.Command(tc.args[0], tc.args[1:]...)
			p, err := StartIdentified(cmd, nil, func(*os.ProcessState, error) { close(done) })
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); <-done }()
			if p.PID != cmd.Process.Pid || p.StartTime == 0 {
				t.Errorf("identity %+v, want PID %d with a start time", p, cmd.Process.Pid)
			}
			select {
			case <-done:
				return // reaped: nothing to compare with any more
			default:
			}
			if now, err := Identify(cmd.Process.Pid); err == nil && now != p {
				t.Errorf("identity %+v, the running child is %+v", p, now)
			}
		})
	}
}
