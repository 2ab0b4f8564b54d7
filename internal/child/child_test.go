package child

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
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
