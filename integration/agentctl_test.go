package integration

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestAgentCallBoot drives `hull agent call --boot` with a script: the VM
// boots with the test assets, both calls answer, and the VM is gone
// afterwards (testConfig's leak check), also when hull is interrupted in the
// middle of a call.
func TestAgentCallBoot(t *testing.T) {
	hull := filepath.Join(env.binDir, "hull")
	t.Run("script", func(t *testing.T) {
		cfgPath := writeHullConfig(t, testConfig(t))
		script := filepath.Join(t.TempDir(), "script")
		if err := os.WriteFile(script, []byte("# boot check\nSystem.GuestDetails\n\nSystem.Health {}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx := withTimeout(t, 3*time.Minute)
		cmd := exec.CommandContext(ctx, hull, "--config", cfgPath, "agent", "call", "--boot", "-f", script)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("hull agent call: %v\nstderr: %s", err, stderr.String())
		}
		out := stdout.String()
		for _, want := range []string{
			"# System.GuestDetails\n",
			`"kernel_release": "` + env.manifest.Kernel.Release + `"`,
			"# System.Health\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output does not hold %q:\n%s", want, out)
			}
		}
		// Right after boot the agent may still load modules (Debian's
		// kernel): starting or serving, but a status either way.
		if !regexp.MustCompile(`"status": "STATUS_(SERVING|STARTING)"`).MatchString(out) {
			t.Errorf("no health status in the output:\n%s", out)
		}
		if strings.Index(out, "# System.GuestDetails") > strings.Index(out, "# System.Health") {
			t.Errorf("calls out of the script's order:\n%s", out)
		}
	})
	t.Run("interrupted", func(t *testing.T) {
		cfgPath := writeHullConfig(t, testConfig(t))
		ctx := withTimeout(t, 3*time.Minute)
		// WaitOOM blocks until an OOM kill, which never comes.
		cmd := exec.CommandContext(ctx, hull, "--config", cfgPath, "agent", "call", "--boot", "--timeout", "10m", "-f", "-")
		cmd.Stdin = strings.NewReader("System.Health\nContainers.WaitOOM\n")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Once Health has answered, hull waits in WaitOOM.
		sc := bufio.NewScanner(stdout)
		served := false
		for !served && sc.Scan() {
			served = strings.Contains(sc.Text(), `"status": "STATUS_`)
		}
		if !served {
			_ = cmd.Wait()
			t.Fatalf("no Health answer; stderr: %s", stderr.String())
		}
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, _ = io.Copy(io.Discard, stdout)
		err = cmd.Wait()
		took := time.Since(start)
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
			t.Fatalf("hull exited with %v after SIGINT, want status 1; stderr: %s", err, stderr.String())
		}
		if took > 90*time.Second {
			t.Errorf("hull took %s to stop after SIGINT", took)
		}
	})
}
