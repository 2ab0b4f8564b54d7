package docker

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	"github.com/opencontainers/runc/types"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// bootLimit bounds how long a container takes to run (a VM boot under TCG
// on a busy host).
const bootLimit = 3 * time.Minute

// TestDocker runs Docker's main container operations on hull-runtime, with
// one daemon for all cases; the daemon's teardown checks that nothing is
// left.
func TestDocker(t *testing.T) {
	d := startDaemon(t)

	t.Run("run prints and exits with the status", func(t *testing.T) {
		out, errOut, code := d.run("run", "--rm", "--runtime", "hull", imageName, "sh", "-c", "echo hi; echo oops >&2; exit 3")
		if out != "hi\n" || !strings.Contains(errOut, "oops") || code != 3 {
			t.Errorf("stdout %q stderr %q status %d; want hi, oops, 3", out, errOut, code)
		}
	})

	t.Run("run -it", func(t *testing.T) {
		runTerminal(t, d)
	})

	t.Run("exec, published port, stop after the grace period", func(t *testing.T) {
		d.mustRun(t, "run", "-d", "--name", "web", "--runtime", "hull", "-p", "127.0.0.1:18080:80", imageName,
			"sh", "-c", "mkdir -p /www && echo hello-web > /www/index.html && echo ready && exec httpd -f -p 80 -h /www")
		waitLog(t, d.run, "web", "ready")
		if out := d.mustRun(t, "exec", "web", "cat", "/www/index.html"); out != "hello-web\n" {
			t.Errorf("exec: %q", out)
		}
		assertInVM(t, d.mustRun(t, "exec", "web", "uname", "-r"))
		if _, _, code := d.run("exec", "web", "sh", "-c", "exit 5"); code != 5 {
			t.Errorf("exec exit status %d, want 5", code)
		}
		// A terminal: the master goes to containerd's console socket.
		if out := d.mustRun(t, "exec", "-t", "web", "tty"); !strings.HasPrefix(out, "/dev/pts/") {
			t.Errorf("exec -t: tty printed %q, want a /dev/pts terminal", out)
		}
		if body := httpGet(t, "http://127.0.0.1:18080/"); body != "hello-web\n" {
			t.Errorf("GET from the host: %q", body)
		}
		// Statistics as runc's events (containerd's runc shim 1.6 reads
		// the supervisor's host cgroup instead, for docker stats).
		ev := runtimeEvents(t, d, strings.TrimSpace(d.mustRun(t, "inspect", "-f", "{{.Id}}", "web")))
		if ev.Type != "stats" || ev.Data.Memory.Usage.Usage == 0 || ev.Data.Pids.Current == 0 || ev.Data.CPU.Usage.Total == 0 {
			t.Errorf("hull-runtime events --stats: %+v; want the memory, CPU time and PIDs of the container", ev)
		}
		// httpd, PID 1 of its namespace, does not die of SIGTERM: docker
		// stop kills it after the grace period.
		start := time.Now()
		d.mustRun(t, "stop", "-t", "2", "web")
		if took := time.Since(start); took < 2*time.Second {
			t.Errorf("stop took %s, less than its grace period", took)
		}
		if code := strings.TrimSpace(d.mustRun(t, "inspect", "-f", "{{.State.ExitCode}}", "web")); code != "137" {
			t.Errorf("exit code after the grace period %s, want 137 (SIGKILL)", code)
		}
		d.mustRun(t, "rm", "web")
	})

	t.Run("stop delivers SIGTERM", func(t *testing.T) {
		d.mustRun(t, "run", "-d", "--name", "trap", "--runtime", "hull", imageName,
			"sh", "-c", `trap "exit 42" TERM; echo ready; while :; do sleep 1; done`)
		waitLog(t, d.run, "trap", "ready")
		d.mustRun(t, "stop", "-t", "60", "trap")
		if code := strings.TrimSpace(d.mustRun(t, "inspect", "-f", "{{.State.ExitCode}}", "trap")); code != "42" {
			t.Errorf("exit code %s, want 42 (the TERM trap)", code)
		}
		d.mustRun(t, "rm", "trap")
	})

	t.Run("rm -f", func(t *testing.T) {
		d.mustRun(t, "run", "-d", "--name", "gone", "--runtime", "hull", imageName, "sleep", "1000")
		waitRunning(t, d.run, "gone")
		d.mustRun(t, "rm", "-f", "gone")
		if out, _, code := d.run("inspect", "gone"); code == 0 {
			t.Errorf("the container is still there: %s", out)
		}
		d.checkClean(t)
	})
}

// runTerminal runs `docker run -it` on a pseudo-terminal, types a command
// and checks its output and the exit status.
func runTerminal(t *testing.T, d *daemon) {
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = master.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	cmd := d.command(ctx, "run", "-it", "--rm", "--runtime", "hull", imageName, "sh")
	slave, err := openTTY(slavePath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = slave.Close()
	var out e2e.SyncBuffer
	go func() { _, _ = io.Copy(&out, master) }()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	// The shell's prompt, unless docker ends first.
	for !strings.Contains(out.String(), "# ") {
		select {
		case err := <-waited:
			t.Fatalf("docker run -it ended before the prompt: %v; output:\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("no prompt within %s; output:\n%s", bootLimit, out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if _, err := master.Write([]byte("echo tty-$((6*7)); tty; exit 4\r")); err != nil {
		t.Fatal(err)
	}
	err = <-waited
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 4 {
		t.Errorf("docker run -it: %v, want exit status 4; output:\n%s", err, out.String())
	}
	if s := out.String(); !strings.Contains(s, "tty-42") || !strings.Contains(s, "/dev/pts/") {
		t.Errorf("terminal output %q lacks the command's output or a /dev/pts terminal", s)
	}
}

// assertInVM checks that a container's `uname -r` is not the host's: the
// container runs on the guest kernel.
func assertInVM(t *testing.T, containerRelease string) {
	t.Helper()
	host, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	if c := strings.TrimSpace(containerRelease); c == "" || c == strings.TrimSpace(string(host)) {
		t.Errorf("the container runs on kernel %q, the host's (%q): not in a VM", c, strings.TrimSpace(string(host)))
	}
}

// cli runs a container engine's CLI (daemon.run, podman.run) and returns
// its stdout, stderr and exit status.
type cli func(args ...string) (string, string, int)

// waitLog waits until the container's log holds want.
func waitLog(t *testing.T, run cli, name, want string) {
	t.Helper()
	deadline := time.Now().Add(bootLimit)
	for {
		out, errOut, _ := run("logs", name)
		if strings.Contains(out+errOut, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s did not log %q within %s: %q %q", name, want, bootLimit, out, errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitRunning waits until the container runs.
func waitRunning(t *testing.T, run cli, name string) {
	t.Helper()
	deadline := time.Now().Add(bootLimit)
	for {
		out, _, _ := run("inspect", "-f", "{{.State.Status}}", name)
		if strings.TrimSpace(out) == "running" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s is %q after %s", name, out, bootLimit)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// httpGet fetches url, retrying for a while (the proxy may still connect).
func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 20 * time.Second}
	var last error
	for i := 0; i < 10; i++ {
		resp, err := c.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b)
			}
			last = rerr
			if last == nil {
				last = errStatus(resp.Status)
			}
		} else {
			last = err
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

// runtimeEvents runs `hull-runtime events --stats` for a container of the
// daemon.
func runtimeEvents(t *testing.T, d *daemon, id string) (ev struct {
	Type string      `json:"type"`
	ID   string      `json:"id"`
	Data types.Stats `json:"data"`
}) {
	t.Helper()
	root := filepath.Join(d.dir, "x", "runtime-runc", "moby")
	out, err := exec.Command(env.runtime, "--root", root, "events", "--stats", id).CombinedOutput()
	if err != nil {
		t.Fatalf("hull-runtime events --stats: %v: %s", err, out)
	}
	t.Logf("hull-runtime events --stats: %s", out)
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatalf("hull-runtime events --stats: %v: %s", err, out)
	}
	return ev
}
