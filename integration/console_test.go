package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// debugImage returns the suite's guest image with a debug shell.
func debugImage(t *testing.T) string { return e2e.DebugImage(t, env.binDir, env.workDir) }

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
		// The shell ended with its input (the exit typed after it) and the agent reaped it.
		if !gone(t, pid) {
			t.Errorf("shell %d is still in the guest after its console ended", pid)
		}
	})

	t.Run("exit status", func(t *testing.T) {
		for _, tc := range []struct {
			script string
			want   int
		}{
			{"echo hull-$((6*7))\nexit 3\n", 3},
			{"kill -KILL $$\n", 137}, // 128 + SIGKILL
			{"false\n", 1},           // the typed exit keeps the last status
		} {
			out, stderr, code := hullExec(t, cfgPath, "console", strings.NewReader(tc.script))
			if code != tc.want || stderr != "" {
				t.Errorf("script %q: status %d, stderr %q (output %q); want %d and no message", tc.script, code, stderr, out, tc.want)
			}
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

	t.Run("interactive terminal follows its size", func(t *testing.T) {
		// hull exec on a terminal of its own: raw mode, the initial size,
		// and a resize (SIGWINCH) passed on to the guest's terminal.
		pty, slave, err := console.NewPty()
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = pty.Close() }()
		if err := pty.Resize(console.WinSize{Width: 100, Height: 30}); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(env.binDir, "hull"), "--config", cfgPath, "exec", "console")
		f, err := os.OpenFile(slave, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, f
		cmd.Env = append(os.Environ(), "TERM=xterm")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		_ = f.Close() // the child holds its own copy
		var waitErr error
		done := make(chan struct{})
		go func() { waitErr = cmd.Wait(); close(done) }()
		defer func() {
			select {
			case <-done:
			default:
				_ = cmd.Process.Kill()
				<-done
			}
		}()
		var out e2e.SyncBuffer
		go io.Copy(&out, pty) //nolint:errcheck // ends with the pty
		// ask types a command until its answer shows up in the output.
		ask := func(cmdline, want string) {
			t.Helper()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(out.String(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("no %q in the output %q", want, out.String())
				}
				if _, err := io.WriteString(pty, cmdline+"\r"); err != nil {
					t.Fatal(err)
				}
				time.Sleep(500 * time.Millisecond)
			}
		}
		ask(`echo "size=$(stty size) term=$TERM"`, "size=30 100 term=xterm")
		if err := pty.Resize(console.WinSize{Width: 132, Height: 50}); err != nil {
			t.Fatal(err)
		}
		ask(`echo "size=$(stty size)"`, "size=50 132")
		if _, err := io.WriteString(pty, "exit\r"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			if waitErr != nil {
				t.Errorf("hull exec: %v; output %q", waitErr, out.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("hull exec did not end after exit; output %q", out.String())
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

// TestDebugConsoleHullRun opens the console of a sandbox that hull run
// started: hull exec sees the container's process in the VM.
func TestDebugConsoleHullRun(t *testing.T) {
	c := containerConfig(t)
	c.Image.AssetsDir = debugImage(t)
	c.Agent.DebugConsole = true
	cfgPath := writeHullConfig(t, c)
	bundle, _ := busyboxBundle(t, "sleep", "600")
	run, done, runErr := startHullRun(t, withTimeout(t, 3*time.Minute), cfgPath, bundle, "run-console")
	// The console serves from the sandbox's start; the container follows.
	waitConsole(t, c.Runtime.StateDir, cfgPath, "run-console", runErr)
	if out, stderr, code := hullExec(t, cfgPath, "run-console", strings.NewReader("echo hull-$((6*7))\n")); code != 0 || !strings.Contains(out, "hull-42") {
		t.Fatalf("hull exec: status %d, stderr %q, output %q; want hull-42", code, stderr, out)
	}
	// From the VM, root can end the container: hull run then ends with
	// its status and tears everything down.
	// The VM may be gone before the console reports its shell's status:
	// that ends the session without one, which is no failure here.
	if _, stderr, code := hullExec(t, cfgPath, "run-console", strings.NewReader("kill -KILL $(pidof sleep)\n")); code != 0 &&
		!strings.Contains(stderr, "the console ended, its shell's status is unknown") {
		t.Fatalf("hull exec kill: status %d, stderr %q", code, stderr)
	}
	select {
	case <-done:
		if code := run.ProcessState.ExitCode(); code != 137 {
			t.Errorf("hull run ended with %d, want 137 (SIGKILL); stderr %s", code, runErr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("hull run did not end after its container was killed; stderr %s", runErr.String())
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

// TestDebugConsoleStopFrozen stops a sandbox whose guest no longer answers
// while a console is open: Stop must still release everything promptly.
func TestDebugConsoleStopFrozen(t *testing.T) {
	c := containerConfig(t)
	c.Image.AssetsDir = debugImage(t)
	c.Agent.DebugConsole = true
	sb := startSandbox(t, c, "frozen")
	dir, _, err := sandbox.Find(c.Runtime.StateDir, "frozen")
	if err != nil {
		t.Fatal(err)
	}
	ctx := withTimeout(t, 3*time.Minute)
	conn, pid, err := sandbox.DialConsole(ctx, dir, sandbox.ConsoleRequest{Width: 80, Height: 24})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if pid == 0 {
		t.Error("console without a pid")
	}
	var out e2e.SyncBuffer
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&out, conn); close(copied) }()
	out.WaitFor(t, "hull-debug# ", time.Minute)
	qemu := sb.VM().Describe().PID
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(qemu, syscall.SIGCONT) }()
	start := time.Now()
	if err := sb.Stop(ctx); err != nil {
		t.Logf("stop of a frozen sandbox: %v", err)
	}
	// The agent calls time out (10 s and 5 s) and QEMU gets its stop
	// timeout before it is killed; a console waiting for the frozen guest
	// would hold Stop for yamux's five-minute stream timeout.
	if took := time.Since(start); took > 90*time.Second {
		t.Errorf("Stop took %v with a console open on a frozen guest", took)
	}
	select {
	case <-copied:
	case <-time.After(10 * time.Second):
		t.Error("the console's connection is still open after Stop")
	}
}
