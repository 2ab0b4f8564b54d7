package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// debugImageOnce builds the debug image once per test run.
var debugImageOnce struct {
	sync.Once
	dir string
	err error
}

// debugImage returns a guest image like the test image but with
// busybox-static as its debug shell, built on first use.
func debugImage(t *testing.T) string {
	t.Helper()
	debugImageOnce.Do(func() {
		out := filepath.Join(env.workDir, "assets-debug-shell")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if debugImageOnce.err = e2e.BuildDebugImage(ctx, env.binDir, out); debugImageOnce.err == nil {
			debugImageOnce.dir = out
		}
	})
	if debugImageOnce.err != nil {
		t.Fatal(debugImageOnce.err)
	}
	return debugImageOnce.dir
}

// hullExec runs `hull exec id` with stdin and returns its output, error
// output and exit status.
func hullExec(t *testing.T, cfgPath, id string, stdin io.Reader) (string, string, int) {
	t.Helper()
	ctx := withTimeout(t, time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfgPath, "exec", id)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// shellPID finds the "pid=<n>" line a console script printed.
var shellPID = regexp.MustCompile(`(?m)^pid=(\d+)\r?$`)

func TestDebugConsole(t *testing.T) {
	assets := debugImage(t)
	c := containerConfig(t)
	c.Image.AssetsDir = assets
	c.Agent.DebugConsole = true
	cfgPath := writeHullConfig(t, c)
	sb := startSandbox(t, c, "console")

	// gone asks a new console whether guest pid has left /proc (a zombie
	// not yet reaped has not).
	gone := func(t *testing.T, pid int) bool {
		t.Helper()
		out, stderr, code := hullExec(t, cfgPath, "console", strings.NewReader(fmt.Sprintf("test -e /proc/%d && echo still-$((%d+0)) || echo gone-$((%d+0))\n", pid, pid, pid)))
		if code != 0 {
			t.Fatalf("hull exec: status %d, stderr %q", code, stderr)
		}
		return strings.Contains(out, fmt.Sprintf("gone-%d", pid))
	}

	t.Run("piped script", func(t *testing.T) {
		// The shell's own output is told from the terminal's echo of the
		// input by arithmetic the shell does: the echo shows $((6*7)).
		script := "echo hull-$((6*7))\necho pid=$$\ncat /proc/1/comm\nid -u\n"
		out, stderr, code := hullExec(t, cfgPath, "console", strings.NewReader(script))
		if code != 0 {
			t.Fatalf("hull exec: status %d, stderr %q, output %q", code, stderr, out)
		}
		for _, want := range []string{"hull-42", "\ninit", "\n0"} {
			if !strings.Contains(out, want) {
				t.Errorf("output %q lacks %q", out, want)
			}
		}
		m := shellPID.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no pid line in %q", out)
		}
		pid, _ := strconv.Atoi(m[1])
		// The shell ended with its input (^D) and the agent reaped it.
		if !gone(t, pid) {
			t.Errorf("shell %d is still in the guest after its console ended", pid)
		}
	})

	t.Run("client killed", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfgPath, "exec", "console")
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		outPipe, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		if _, err := io.WriteString(in, "echo pid=$$\nsleep 1000\n"); err != nil {
			t.Fatal(err)
		}
		pid := 0
		sc := bufio.NewScanner(outPipe)
		for pid == 0 && sc.Scan() {
			if m := shellPID.FindStringSubmatch(sc.Text()); m != nil {
				pid, _ = strconv.Atoi(m[1])
			}
		}
		if pid == 0 {
			t.Fatalf("no pid line: %v", sc.Err())
		}
		// The client goes away without a word while the shell waits for
		// sleep: the guest must hang the shell up, and kill it at the latest
		// 5 s later. The pause lets the terminal fall silent first, so that
		// the end of the client's input, not a failed write of output, is
		// what the sandbox acts on.
		time.Sleep(time.Second)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		deadline := time.Now().Add(15 * time.Second)
		for !gone(t, pid) {
			if time.Now().After(deadline) {
				t.Fatalf("shell %d still in the guest 15 s after its client died", pid)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("unknown sandbox", func(t *testing.T) {
		_, stderr, code := hullExec(t, cfgPath, "nothing-here", strings.NewReader(""))
		if code == 0 || !strings.Contains(stderr, "no sandbox nothing-here") {
			t.Errorf("status %d, stderr %q; want a failure naming the sandbox", code, stderr)
		}
	})

	if err := sb.Stop(context.Background()); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// TestDebugConsoleRefused checks the two ways a console is refused: the
// configuration does not enable it, or the guest image has no shell.
func TestDebugConsoleRefused(t *testing.T) {
	t.Run("disabled", func(t *testing.T) {
		c := containerConfig(t)
		c.Image.AssetsDir = debugImage(t)
		cfgPath := writeHullConfig(t, c)
		startSandbox(t, c, "no-console")
		_, stderr, code := hullExec(t, cfgPath, "no-console", strings.NewReader("echo hull-$((6*7))\n"))
		if code == 0 || !strings.Contains(stderr, "debug_console = true") {
			t.Errorf("status %d, stderr %q; want a failure naming the setting", code, stderr)
		}
	})
	t.Run("no shell in the image", func(t *testing.T) {
		c := containerConfig(t)
		c.Agent.DebugConsole = true
		cfgPath := writeHullConfig(t, c)
		startSandbox(t, c, "no-shell")
		_, stderr, code := hullExec(t, cfgPath, "no-shell", strings.NewReader("echo hull-$((6*7))\n"))
		if code == 0 || !strings.Contains(stderr, "debug shell") {
			t.Errorf("status %d, stderr %q; want a failure naming the missing shell", code, stderr)
		}
	})
}
