package containerd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// TestContainerd runs every case against each containerd version, its
// pods' VMs booted or, with HULL_TEST_FACTORY set, from the VM factory
// (runCases).
func TestContainerd(t *testing.T) {
	for _, version := range []string{"1.6", "2"} {
		t.Run("containerd-"+version, func(t *testing.T) { runCases(t, version, env.mode) })
	}
}

// factoryVMs is the suite's factory.vm_cache in cache mode: the most pods
// a case starts at once.
const factoryVMs = 2

// runCases runs the cases against a containerd of version whose pods get
// their VMs as mode says. With a factory, each case starts with the
// factory's pool full, each of its sandboxes must start from the factory
// but those coldCases names, and at the end the factory stops and
// leaves nothing.
func runCases(t *testing.T, version string, mode e2e.FactoryMode) {
	containerdPath, ctrPath := daemonBinaries(t, version)
	d, f := startModeDaemon(t, containerdPath, ctrPath, mode)
	tally := e2e.StartTally{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			claims := f.BeginCase(t)
			from := d.log.Len()
			defer func() { f.CheckStarts(t, d.log.Since(from), coldCases[c.name], tally, claims) }()
			defer d.checkClean(t)
			c.run(t, d)
		})
	}
	f.CheckSuite(t, tally)
	f.Stop(t, d.stateRoot)
}

// startModeDaemon starts a daemon (startDaemon) whose hull shims take
// their VMs from a VM factory of mode (nil for e2e.ModeCold), started
// with the daemon's hull configuration and the suite's guest image.
func startModeDaemon(t *testing.T, containerdPath, ctrPath string, mode e2e.FactoryMode) (*daemon, *e2e.Factory) {
	t.Helper()
	if mode == e2e.ModeCold {
		return startDaemon(t, containerdPath, ctrPath), nil
	}
	dir, err := os.MkdirTemp(env.workDir, "f")
	if err != nil {
		t.Fatal(err)
	}
	f := e2e.NewFactory(mode, dir, filepath.Base(dir), factoryVMs)
	d := startDaemonWith(t, containerdPath, ctrPath, daemonOptions{tables: f.Config()})
	f.Start(t, filepath.Join(env.binDir, "hull"), d.hullConfigPath(), filepath.Join(env.shimDir, "containerd-shim-hull-v2"))
	d.factory = f
	return d, f
}

// debugConfigCold is why the cases that run the debug image boot their
// VMs in every factory mode. In cache mode the shim's start finds the
// pod's configuration in its runtime options, as the server does, and
// claims no warm VM: the factory's counters do not move (Unclaimed).
var debugConfigCold = e2e.Cold{Pods: 1, Unclaimed: true, Why: "the pod's runtime configuration (ctr --runtime-config-path) is its own, " +
	"with the debug image and no factory: a VM of another initrd, which neither a warm VM nor the suite's template is"}

// coldCases names the cases whose sandboxes, or some of them, cannot
// start from a factory, and why.
var coldCases = map[string]e2e.Cold{
	"debug console through the shim": debugConfigCold,
	"kill not reported by the guest": debugConfigCold,
}

var cases = []struct {
	name string
	run  func(*testing.T, *daemon)
}{
	{"run --rm output", func(t *testing.T, d *daemon) {
		out := d.mustCtr(t, "run", "--rm", "--runtime", runtimeName, imageName, "rm-out", "echo", "hello")
		if out != "hello\n" {
			t.Errorf("got %q, want %q", out, "hello\n")
		}
	}},
	{"run --rm exit status", func(t *testing.T, d *daemon) {
		out, errOut, code := d.ctr(t, "run", "--rm", "--runtime", runtimeName, imageName, "rm-status", "sh", "-c", "echo out; echo err >&2; exit 3")
		if out != "out\n" || errOut != "err\n" || code != 3 {
			t.Errorf("got stdout %q stderr %q exit %d, want \"out\\n\" \"err\\n\" 3", out, errOut, code)
		}
	}},
	{"container sees its own cgroup", func(t *testing.T, d *daemon) {
		// A cgroup mount shows the container's own cgroup and limits, as
		// runc shows it on a cgroup-v2 host, whatever the host's version.
		out, errOut, code := d.ctr(t, "run", "--rm", "--runtime", runtimeName, "--memory-limit", "67108864", "--cpus", "0.5",
			"--mount", "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro",
			imageName, "own-cgroup", "sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /proc/self/cgroup; touch /sys/fs/cgroup/x")
		want := "67108864\n50000 100000\n0::/\n"
		if !strings.HasPrefix(out, want) || !strings.Contains(errOut, "Read-only file system") || code == 0 {
			t.Errorf("got stdout %q stderr %q exit %d, want stdout %q and a read-only mount", out, errOut, code, want)
		}
	}},
	{"detached task lifecycle", func(t *testing.T, d *daemon) {
		const id = "detached"
		d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		defer d.forget(t, id)
		checkTaskPidIsVMM(t, d, id)
		if out := d.mustCtr(t, "task", "exec", "--exec-id", "e1", id, "echo", "from exec"); out != "from exec\n" {
			t.Errorf("exec: got %q", out)
		}
		if _, _, code := d.ctr(t, "task", "exec", "--exec-id", "e2", id, "sh", "-c", "exit 5"); code != 5 {
			t.Errorf("exec exit: got %d, want 5", code)
		}
		// A running exec shows in ps with its exec ID, as with runc.
		d.mustCtr(t, "task", "exec", "--detach", "--exec-id", "e3", id, "sleep", "600")
		if out := d.mustCtr(t, "task", "ps", id); !strings.Contains(out, "PID") || len(strings.Split(strings.TrimSpace(out), "\n")) < 3 || !strings.Contains(out, "e3") {
			t.Errorf("ps: got %q, want the init and exec e3", out)
		}
		d.mustCtr(t, "task", "pause", id)
		if out := d.mustCtr(t, "task", "ls"); !strings.Contains(out, "PAUSED") {
			t.Errorf("after pause, task ls: %q", out)
		}
		d.mustCtr(t, "task", "resume", id)
		if out := d.mustCtr(t, "task", "ls"); !strings.Contains(out, "RUNNING") {
			t.Errorf("after resume, task ls: %q", out)
		}
		if out := d.mustCtr(t, "task", "metrics", id); !strings.Contains(out, "memory") {
			t.Errorf("metrics: got %q", out)
		}
		// sleep is PID 1 of its PID namespace: only SIGKILL ends it.
		d.mustCtr(t, "task", "kill", "-s", "KILL", id)
		waitStatus(t, d, id, "STOPPED")
		d.mustCtr(t, "task", "delete", id)
		d.mustCtr(t, "container", "delete", id)
	}},
	{"same id in two namespaces", func(t *testing.T, d *daemon) {
		// Each namespace's container gets a VM of its own; neither's state,
		// cgroup or VM meets the other's.
		const id, other = "twin", "hull-other"
		if out, errOut, code := d.ctr(t, "-n", other, "images", "import", env.image); code != 0 {
			t.Fatalf("importing the image into %s: %s%s", other, out, errOut)
		}
		d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		defer d.forget(t, id)
		d.mustCtr(t, "-n", other, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		defer func() {
			d.ctr(t, "-n", other, "task", "delete", "-f", id)
			d.ctr(t, "-n", other, "container", "delete", id)
			d.ctr(t, "-n", other, "images", "rm", imageName)
			d.ctr(t, "namespaces", "rm", other)
		}()
		for _, ns := range []string{"default", other} {
			if out := d.mustCtr(t, "-n", ns, "task", "exec", "--exec-id", "e-"+ns, id, "echo", ns); out != ns+"\n" {
				t.Errorf("exec in %s: got %q", ns, out)
			}
		}
		d.mustCtr(t, "-n", other, "task", "kill", "-s", "KILL", id)
		waitStatusIn(t, d, other, id, "STOPPED")
		if out := d.mustCtr(t, "task", "ls"); !strings.Contains(out, "RUNNING") {
			t.Errorf("default's task after the other's stopped: %q", out)
		}
	}},
	{"run with piped stdin", func(t *testing.T, d *daemon) {
		// ctr closes the process's stdin (CloseIO) as soon as it has written
		// the last byte into the FIFO; everything must still arrive.
		data := make([]byte, 8<<20)
		for i := range data {
			data[i] = byte(i * 7 / 3)
		}
		out, errOut, code := d.ctrIn(t, bytes.NewReader(data), "run", "--rm", "--runtime", runtimeName, imageName, "stdin-pipe", "sha256sum")
		if want := fmt.Sprintf("%x  -\n", sha256.Sum256(data)); out != want || code != 0 {
			t.Errorf("sha256sum of 8 MiB of stdin: got %q (stderr %q, exit %d), want %q", out, errOut, code, want)
		}
	}},
	{"run with short or empty stdin", func(t *testing.T, d *daemon) {
		// The input is in the FIFO before the container exists; ctr may ask
		// for CloseIO early, or not at all.
		for i, in := range []string{"hi\n", ""} {
			out, errOut, code := d.ctrIn(t, strings.NewReader(in), "run", "--rm", "--runtime", runtimeName, imageName, fmt.Sprintf("stdin-short%d", i), "cat")
			if out != in || code != 0 {
				t.Errorf("cat of %q: got %q (stderr %q, exit %d)", in, out, errOut, code)
			}
		}
	}},
	{"exec with stdin", func(t *testing.T, d *daemon) {
		const id = "exec-stdin"
		d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		defer func() {
			d.mustCtr(t, "task", "delete", "-f", id)
			d.mustCtr(t, "container", "delete", id)
		}()
		for i, in := range []string{"hi\n", ""} {
			out, errOut, code := d.ctrIn(t, strings.NewReader(in), "task", "exec", "--exec-id", fmt.Sprintf("cat%d", i), id, "cat")
			if out != in || code != 0 {
				t.Errorf("exec cat of %q: got %q (stderr %q, exit %d)", in, out, errOut, code)
			}
		}
	}},
	{"debug console through the shim", func(t *testing.T, d *daemon) {
		// A runtime configuration of its own (ctr's --runtime-config-path,
		// containerd's runtime options): the image with a debug shell, the
		// console on, the daemon's state root.
		cfg := filepath.Join(d.dir, "hull-console.toml")
		body := fmt.Sprintf("[image]\nassets_dir = %q\n[agent]\ndebug_console = true\n[runtime]\nstate_dir = %q\n", debugImage(t), d.stateRoot)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		const id = "console"
		d.mustCtr(t, "run", "-d", "--runtime", runtimeName, "--runtime-config-path", cfg, imageName, id, "sleep", "600")
		defer d.forget(t, id)
		// The shim names the sandbox console@default; hull exec finds it by
		// the container's ID. The shell sees the pod's container.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfg, "exec", id)
		cmd.Stdin = strings.NewReader("ps\necho hull-$((6*7))\n")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "hull-42") || !strings.Contains(string(out), "sleep 600") {
			t.Errorf("hull exec: %v; output %q, want hull-42 and the container's sleep 600", err, out)
		}
		d.mustCtr(t, "task", "kill", "-s", "KILL", id)
		waitStatus(t, d, id, "STOPPED")
		d.mustCtr(t, "task", "delete", id)
		d.mustCtr(t, "container", "delete", id)
	}},
	{"kill not reported by the guest", func(t *testing.T, d *daemon) {
		// A process outside the container (from the debug console) holds
		// the container's stdout pipe open: the agent, which reports an
		// init's exit once its output has ended, never reports the kill.
		// The host declares the task dead after agent.kill_timeout and
		// stops the VM.
		cfg := filepath.Join(d.dir, "hull-kill.toml")
		body := fmt.Sprintf("[image]\nassets_dir = %q\n[agent]\ndebug_console = true\nkill_timeout = \"3s\"\ndial_timeout = \"120s\"\n[runtime]\nstate_dir = %q\n", debugImage(t), d.stateRoot)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		const id = "kill-unreported"
		logURI := "file://" + filepath.Join(d.dir, id+".log")
		d.mustCtr(t, "run", "-d", "--log-uri", logURI, "--runtime", runtimeName, "--runtime-config-path", cfg, imageName, id, "sleep", "601")
		defer d.forget(t, id)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfg, "exec", id)
		cmd.Stdin = strings.NewReader(`pidof() { for d in /proc/[0-9]*; do [ "$(tr '\0' ' ' <$d/cmdline 2>/dev/null)" = "$1 " ] && echo ${d#/proc/}; done; }
P=$(pidof 'sleep 601')
setsid sleep 900 >/proc/$P/fd/1 2>&1 </dev/null &
sleep 1
H=$(pidof 'sleep 900')
echo "held:$(readlink /proc/$P/fd/1):$(readlink /proc/$H/fd/1):"
`)
		out, err := cmd.CombinedOutput()
		m := regexp.MustCompile(`held:(pipe:\[\d+\]):(pipe:\[\d+\]):`).FindStringSubmatch(string(out))
		if err != nil || m == nil || m[1] != m[2] {
			t.Fatalf("hull exec: %v; output %q, want the container's stdout pipe held by another process", err, out)
		}
		d.mustCtr(t, "task", "kill", "-s", "KILL", id)
		waitStatus(t, d, id, "STOPPED")
		// ctr task delete reports the task's status: as its own exit
		// status (2.x) or in a warning (1.6).
		if _, errOut, code := d.ctr(t, "task", "delete", id); code != 137 && !strings.Contains(errOut, "exit code 137") {
			t.Errorf("task delete: exit %d (%s), want status 137", code, errOut)
		}
		d.mustCtr(t, "container", "delete", id)
	}},
	{"forced delete", func(t *testing.T, d *daemon) {
		const id = "forced"
		d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		d.mustCtr(t, "task", "delete", "-f", id)
		d.mustCtr(t, "container", "delete", id)
	}},
	{"terminal", func(t *testing.T, d *daemon) {
		pty, slave, err := console.NewPty()
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = pty.Close() }()
		cmd := exec.Command(d.ctrPath, "-a", d.address, "run", "-t", "--rm", "--runtime", runtimeName, imageName, "tty", "sh")
		f, err := os.OpenFile(slave, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		_ = f.Close() // the child holds its own copy of the slave
		var out e2e.SyncBuffer
		go io.Copy(&out, pty) //nolint:errcheck // ends with the pty
		waitFor(t, 2*time.Minute, func() bool { return strings.Contains(out.String(), "#") }, "a shell prompt", &out)
		if _, err := fmt.Fprint(pty, "tty -s && echo TTY=yes; exit 7\r"); err != nil {
			_ = cmd.Process.Kill()
			t.Fatalf("writing to the pty: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var exit *exec.ExitError
			if !strings.Contains(out.String(), "TTY=yes") || !errorsAs(err, &exit) || exit.ExitCode() != 7 {
				t.Errorf("got %v and output %q, want exit 7 and TTY=yes", err, out.String())
			}
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			t.Fatalf("ctr run -t did not end; output %q", out.String())
		}
	}},
	{"two concurrent containers", func(t *testing.T, d *daemon) {
		var wg sync.WaitGroup
		outs := make([]string, 2)
		for i := range outs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, errOut, code := d.ctr(t, "run", "--rm", "--runtime", runtimeName, imageName, fmt.Sprintf("conc%d", i), "echo", fmt.Sprint(i))
				outs[i] = fmt.Sprintf("%s%s(exit %d)", out, errOut, code)
			}()
		}
		wg.Wait()
		for i, o := range outs {
			if want := fmt.Sprintf("%d\n(exit 0)", i); o != want {
				t.Errorf("container %d: got %q, want %q", i, o, want)
			}
		}
	}},
	{"qemu killed", func(t *testing.T, d *daemon) {
		const id = "qemu-killed"
		d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		defer d.forget(t, id)
		pid := taskPid(t, d, id) // its VMM
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, d, id, "STOPPED")
		d.mustCtr(t, "task", "delete", id)
		d.mustCtr(t, "container", "delete", id)
	}},
	{"shim killed", func(t *testing.T, d *daemon) {
		const id = "shim-killed"
		d.mustCtr(t, "run", "-d", "--runtime", runtimeName, imageName, id, "sleep", "600")
		defer d.forget(t, id)
		// The VMM's parent: a claimed warm shim's command line does not
		// name the daemon.
		pid := e2e.ParentPid(taskPid(t, d, id))
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !bytes.Contains(cmdline, []byte("containerd-shim-hull-v2")) {
			t.Fatalf("the task's VMM's parent %d is %q, not its shim", pid, cmdline)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// containerd sees the shim go, runs `shim delete` and marks the
		// task stopped.
		waitFor(t, time.Minute, func() bool {
			out, _, _ := d.ctr(t, "task", "ls")
			return !strings.Contains(out, id) || strings.Contains(out, "STOPPED")
		}, "the task to stop", nil)
		d.ctr(t, "task", "delete", id)
		d.mustCtr(t, "container", "delete", id)
	}},
	{"bad spec", func(t *testing.T, d *daemon) {
		// A process with no arguments passes ctr and containerd and is
		// refused by hull.
		_, errOut, code := d.ctr(t, "run", "--rm", "--runtime", runtimeName, imageName, "bad-spec", "")
		if code == 0 || !strings.Contains(errOut, "args") {
			t.Errorf("got exit %d and %q, want a failure naming the args", code, errOut)
		}
		d.ctr(t, "container", "delete", "bad-spec")
	}},
}

// waitStatus waits until ctr task ls shows the task in status.
func waitStatus(t *testing.T, d *daemon, id, status string) {
	t.Helper()
	waitStatusIn(t, d, "default", id, status)
}

// waitStatusIn waits until task id of containerd namespace ns has status.
func waitStatusIn(t *testing.T, d *daemon, ns, id, status string) {
	t.Helper()
	waitFor(t, time.Minute, func() bool {
		out, _, _ := d.ctr(t, "-n", ns, "task", "ls")
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == id && f[2] == status {
				return true
			}
		}
		return false
	}, "task "+id+" "+status, nil)
}

func waitFor(t *testing.T, limit time.Duration, cond func() bool, what string, out fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			if out != nil {
				t.Fatalf("timed out waiting for %s; output %q", what, out.String())
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// taskPid is the PID `ctr task ls` shows for task id: its VMM
// (checkTaskPidIsVMM).
func taskPid(t *testing.T, d *daemon, id string) int {
	t.Helper()
	out := d.mustCtr(t, "task", "ls")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil || pid <= 0 {
				t.Fatalf("task ls shows pid %q for %s", f[1], id)
			}
			return pid
		}
	}
	t.Fatalf("task ls shows no task %s:\n%s", id, out)
	return 0
}

// checkTaskPidIsVMM checks that the PID `ctr task ls` shows for task id is
// a host process of the task: its VMM, QEMU.
func checkTaskPidIsVMM(t *testing.T, d *daemon, id string) {
	t.Helper()
	out := d.mustCtr(t, "task", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != id {
			continue
		}
		exe, err := os.Readlink("/proc/" + f[1] + "/exe")
		if err != nil {
			t.Fatalf("task ls shows pid %s for %s: %v", f[1], id, err)
		}
		if !strings.Contains(filepath.Base(exe), "qemu-system") {
			t.Errorf("task ls shows pid %s for %s, whose program is %s, not the VMM", f[1], id, exe)
		}
		cmdline, err := os.ReadFile("/proc/" + f[1] + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), d.stateRoot) {
			t.Errorf("pid %s is a qemu of another sandbox: %q, %v", f[1], cmdline, err)
		}
		return
	}
	t.Fatalf("task ls shows no task %s:\n%s", id, out)
}
