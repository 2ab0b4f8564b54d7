package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// TestContainer runs containers in one sandbox, one case after the other.
func TestContainer(t *testing.T) {
	c := containerConfig(t)
	sb := startSandbox(t, c, "ctr")

	t.Run("streams and status", func(t *testing.T) {
		bundle, spec := busyboxBundle(t, "sh", "-c", "echo out; echo err >&2; exit 3")
		r := runContainer(t, sb, "streams", bundle, spec)
		if r.stdout != "out\n" || r.stderr != "err\n" || r.status != 3 {
			t.Errorf("got stdout %q stderr %q status %d, want \"out\\n\" \"err\\n\" 3", r.stdout, r.stderr, r.status)
		}
	})

	t.Run("signals", func(t *testing.T) {
		// `sleep` is not PID 1 of the container here: PID 1 of a PID
		// namespace ignores the signals it has no handler for, SIGTERM
		// included, as under runc.
		ctx := withTimeout(t, time.Minute)
		bundle, spec := busyboxBundle(t, "sh", "-c", "sleep 1000 & echo started; wait")
		var out e2e.SyncBuffer
		ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "signals", Bundle: bundle, Spec: spec, Stdio: sandbox.IO{Stdout: &out}})
		if err != nil {
			t.Fatal(err)
		}
		defer deleteContainer(t, ctr)
		if ctr.State() != sandbox.ContainerCreated || ctr.Init().State() != sandbox.ProcessCreated {
			t.Errorf("states %s/%s after create", ctr.State(), ctr.Init().State())
		}
		if err := ctr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if ctr.State() != sandbox.ContainerRunning {
			t.Errorf("state %s after start", ctr.State())
		}
		out.WaitFor(t, "started", 30*time.Second)
		proc := *spec.Process
		proc.Args = []string{"sh", "-c", "echo started; exec sleep 1000"}
		var execOut e2e.SyncBuffer
		p, err := ctr.Exec(ctx, "sleeper", &proc, sandbox.IO{Stdout: &execOut})
		if err != nil {
			t.Fatal(err)
		}
		execOut.WaitFor(t, "started", 30*time.Second)
		time.Sleep(200 * time.Millisecond) // let the shell exec sleep
		pids, err := ctr.Pids(ctx)
		if err != nil || len(pids) != 3 || !slices.Contains(pids, ctr.Init().Pid()) || !slices.Contains(pids, p.Pid()) {
			t.Errorf("pids %v (%v), want 3 with %d and %d", pids, err, ctr.Init().Pid(), p.Pid())
		}
		if err := p.Signal(ctx, syscall.SIGTERM, false); err != nil {
			t.Fatal(err)
		}
		if st, err := p.Wait(ctx); err != nil || st.Code != 143 {
			t.Errorf("sleep after SIGTERM: status %d (%v), want 143", st.Code, err)
		}
		if p.State() != sandbox.ProcessExited {
			t.Errorf("exec state %s after exit", p.State())
		}
		if err := ctr.Signal(ctx, syscall.SIGKILL, true); err != nil {
			t.Fatal(err)
		}
		st, err := ctr.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Code != 137 {
			t.Errorf("status %d after SIGKILL to all, want 137", st.Code)
		}
		if ctr.State() != sandbox.ContainerStopped {
			t.Errorf("state %s after exit, want stopped", ctr.State())
		}
	})

	t.Run("pause resume update stats", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		bundle, spec := busyboxBundle(t, "sleep", "1000")
		ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "pause", Bundle: bundle, Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		defer deleteContainer(t, ctr)
		if err := ctr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := ctr.Pause(ctx); err != nil || ctr.State() != sandbox.ContainerPaused {
			t.Errorf("pause: %v, state %s", err, ctr.State())
		}
		if err := ctr.Resume(ctx); err != nil || ctr.State() != sandbox.ContainerRunning {
			t.Errorf("resume: %v, state %s", err, ctr.State())
		}
		limit := int64(64 << 20)
		if err := ctr.Update(ctx, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
			t.Errorf("update: %v", err)
		}
		// Right after Start the container's init may still be
		// libcontainer's (a Go process with several threads, which
		// pids.current counts) until it has executed sleep.
		var stats *agent.StatsResponse
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if stats, err = ctr.Stats(ctx); err != nil {
				t.Fatalf("stats: %v", err)
			}
			if stats.GetPids().GetCurrent() == 1 || time.Now().After(deadline) {
				break
			}
		}
		if stats.GetMemory().GetLimit() != uint64(limit) || stats.GetPids().GetCurrent() != 1 {
			t.Errorf("stats: memory limit %d, pids %d; want %d, 1", stats.GetMemory().GetLimit(), stats.GetPids().GetCurrent(), limit)
		}
	})

	t.Run("exec", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		bundle, spec := busyboxBundle(t, "sh", "-c", "echo ready > /tmp/ready; sleep 1000")
		ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "exec", Bundle: bundle, Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		defer deleteContainer(t, ctr)
		if _, err := ctr.Exec(ctx, "early", &specs.Process{Args: []string{"true"}, Cwd: "/"}, sandbox.IO{}); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("exec before start: %v, want a failed-precondition error", err)
		}
		if err := ctr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		var out e2e.SyncBuffer
		proc := *spec.Process
		proc.Args = []string{"sh", "-c", "while [ ! -e /tmp/ready ]; do sleep 0.1; done; cat /tmp/ready; read line; echo got $line; exit 7"}
		p, err := ctr.Exec(ctx, "e1", &proc, sandbox.IO{Stdin: strings.NewReader("hello\n"), Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Code != 7 || out.String() != "ready\ngot hello\n" {
			t.Errorf("exec: status %d output %q, want 7 \"ready\\ngot hello\\n\"", st.Code, out.String())
		}
		if _, err := ctr.Exec(ctx, "e1", &proc, sandbox.IO{}); !errdefs.IsAlreadyExists(err) {
			t.Errorf("second exec e1: %v, want already-exists", err)
		}
		if err := ctr.Delete(ctx, false); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("delete of a running container without force: %v, want failed-precondition", err)
		}
	})

	t.Run("tty", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		ctr, stdinW, out := startTTY(ctx, t, sb, "tty", "stty size; read x; stty size")
		defer func() { _ = stdinW.Close() }()
		out.WaitFor(t, "24 80", 30*time.Second)
		if err := ctr.ResizeTTY(ctx, 100, 40); err != nil {
			t.Fatal(err)
		}
		if _, err := stdinW.Write([]byte("\n")); err != nil {
			t.Fatal(err)
		}
		st, err := ctr.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Code != 0 || !strings.Contains(out.String(), "40 100") {
			t.Errorf("tty: status %d output %q, want 0 and \"40 100\" after the resize", st.Code, out.String())
		}
	})

	t.Run("tty input closed", func(t *testing.T) {
		// As with containerd's runc shim, the terminal of a process whose
		// input the host closes is hung up: a shell waiting in read reads
		// end of file and ends. Before, it waited forever.
		ctx := withTimeout(t, time.Minute)
		ctr, stdinW, out := startTTY(ctx, t, sb, "tty-hup", "echo ready; read x; echo read returned $?")
		out.WaitFor(t, "ready", 30*time.Second)
		_ = stdinW.Close()
		st, err := ctr.Wait(ctx)
		if err != nil {
			t.Fatalf("waiting for the hung-up shell: %v (output %q)", err, out.String())
		}
		if st.Code == 128+int(syscall.SIGKILL) {
			t.Errorf("the shell was killed (output %q), want it to end by itself", out.String())
		}
	})

	t.Run("env cwd user hostname", func(t *testing.T) {
		bundle, spec := busyboxBundle(t, "sh", "-c", `echo "$FOO|$(pwd)|$(id -u)|$(hostname)"`)
		spec.Process.Env = append(spec.Process.Env, "FOO=bar baz")
		spec.Process.Cwd = "/tmp"
		spec.Process.User = specs.User{UID: 1000, GID: 1000}
		spec.Hostname = "box1"
		r := runContainer(t, sb, "env", bundle, spec)
		if want := "bar baz|/tmp|1000|box1\n"; r.stdout != want || r.status != 0 {
			t.Errorf("got %q (stderr %q, status %d), want %q", r.stdout, r.stderr, r.status, want)
		}
	})

	t.Run("memory limit", func(t *testing.T) {
		bundle, spec := busyboxBundle(t, "cat", "/sys/fs/cgroup/memory.max")
		limit := int64(32 << 20)
		spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
		r := runContainer(t, sb, "memmax", bundle, spec)
		if strings.TrimSpace(r.stdout) != "33554432" || r.status != 0 {
			t.Errorf("memory.max %q (stderr %q, status %d), want 33554432", r.stdout, r.stderr, r.status)
		}

		// Drain events of earlier cases, if any.
		for len(sb.OOMEvents()) > 0 {
			<-sb.OOMEvents()
		}
		bundle, spec = busyboxBundle(t, "tail", "/dev/zero")
		spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
		r = runContainer(t, sb, "memhog", bundle, spec)
		if r.status != 137 {
			t.Errorf("memory hog ended with %d (stderr %q), want 137", r.status, r.stderr)
		}
		select {
		case id := <-sb.OOMEvents():
			if id != "memhog" {
				t.Errorf("oom event for %q, want memhog", id)
			}
		case <-time.After(10 * time.Second):
			t.Error("no oom event")
		}
	})

	t.Run("seccomp", func(t *testing.T) {
		// A profile that allows everything but mkdir and mkdirat, which fail
		// with EPERM: the guest's libcontainer loads it (libseccomp is
		// linked into the static agent).
		bundle, spec := busyboxBundle(t, "sh", "-c", "mkdir /tmp/d; echo mkdir=$?; touch /tmp/f && echo touch=ok")
		spec.Linux.Seccomp = &specs.LinuxSeccomp{
			DefaultAction: specs.ActAllow,
			Architectures: []specs.Arch{specs.ArchX86_64},
			Syscalls: []specs.LinuxSyscall{{
				Names:  []string{"mkdir", "mkdirat"},
				Action: specs.ActErrno,
			}},
		}
		r := runContainer(t, sb, "seccomp", bundle, spec)
		if r.status != 0 || !strings.Contains(r.stdout, "mkdir=1") || !strings.Contains(r.stdout, "touch=ok") ||
			!strings.Contains(r.stderr, "Operation not permitted") {
			t.Errorf("under a profile denying mkdir: stdout %q stderr %q status %d, want mkdir refused with EPERM and touch allowed",
				r.stdout, r.stderr, r.status)
		}
		if _, err := os.Stat(filepath.Join(bundle, "rootfs/tmp/d")); err == nil {
			t.Error("the directory was made despite the profile")
		}

		// The same command without the profile makes the directory.
		bundle, spec = busyboxBundle(t, "sh", "-c", "mkdir /tmp/d; echo mkdir=$?")
		if r := runContainer(t, sb, "noseccomp", bundle, spec); !strings.Contains(r.stdout, "mkdir=0") {
			t.Errorf("without the profile: stdout %q stderr %q", r.stdout, r.stderr)
		}
	})

	t.Run("read-only rootfs", func(t *testing.T) {
		bundle, spec := busyboxBundle(t, "sh", "-c", "touch /x")
		spec.Root.Readonly = true
		r := runContainer(t, sb, "rorootfs", bundle, spec)
		if r.status == 0 || !strings.Contains(r.stderr, "Read-only file system") {
			t.Errorf("write to a read-only root: status %d stderr %q", r.status, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(bundle, "rootfs/x")); err == nil {
			t.Error("file written to a read-only root")
		}
	})

	t.Run("volumes", func(t *testing.T) {
		rw, ro := t.TempDir(), t.TempDir()
		if err := os.WriteFile(filepath.Join(ro, "f"), []byte("ro data\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		bundle, spec := busyboxBundle(t, "sh", "-c", "echo hi > /rw/new; cat /ro/f; if touch /ro/g; then exit 1; fi")
		spec.Mounts = append(spec.Mounts,
			specs.Mount{Destination: "/rw", Type: "bind", Source: rw, Options: []string{"rbind", "rw"}},
			specs.Mount{Destination: "/ro", Type: "bind", Source: ro, Options: []string{"rbind", "ro"}},
		)
		r := runContainer(t, sb, "volumes", bundle, spec)
		if r.status != 0 || r.stdout != "ro data\n" || !strings.Contains(r.stderr, "Read-only file system") {
			t.Errorf("volumes: status %d stdout %q stderr %q", r.status, r.stdout, r.stderr)
		}
		if b, err := os.ReadFile(filepath.Join(rw, "new")); err != nil || string(b) != "hi\n" {
			t.Errorf("file written to the rw volume: %q %v", b, err)
		}
		if _, err := os.Stat(filepath.Join(ro, "g")); err == nil {
			t.Error("file written to the ro volume")
		}
	})

	t.Run("10MB stdout", func(t *testing.T) {
		bundle, spec := busyboxBundle(t, "sh", "-c",
			"head -c 10485760 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob")
		r := runContainer(t, sb, "bigout", bundle, spec)
		sum := sha256.Sum256([]byte(r.stdout))
		fields := strings.Fields(r.stderr)
		if r.status != 0 || len(r.stdout) != 10<<20 || len(fields) == 0 || fields[0] != hex.EncodeToString(sum[:]) {
			t.Errorf("got %d bytes with sha256 %x, status %d; the guest says %q", len(r.stdout), sum, r.status, r.stderr)
		}
	})

	t.Run("separate roots", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		bundleA, specA := busyboxBundle(t, "sh", "-c", "echo a > /who; sleep 1000")
		a, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "root-a", Bundle: bundleA, Spec: specA})
		if err != nil {
			t.Fatal(err)
		}
		defer deleteContainer(t, a)
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := os.Stat(filepath.Join(bundleA, "rootfs/who")); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("container a did not write /who to its root")
			}
			time.Sleep(50 * time.Millisecond)
		}
		bundleB, specB := busyboxBundle(t, "sh", "-c", "if [ -e /who ]; then exit 1; fi; echo b > /who; cat /who")
		r := runContainer(t, sb, "root-b", bundleB, specB)
		if r.status != 0 || r.stdout != "b\n" {
			t.Errorf("container b: status %d stdout %q stderr %q", r.status, r.stdout, r.stderr)
		}
		if b, _ := os.ReadFile(filepath.Join(bundleA, "rootfs/who")); string(b) != "a\n" {
			t.Errorf("a's /who is %q", b)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		cases := []struct {
			name   string
			change func(t *testing.T, bundle string, spec *specs.Spec)
			want   string
		}{
			{"no args", func(t *testing.T, _ string, s *specs.Spec) { s.Process.Args = nil }, "no args"},
			{"no process", func(t *testing.T, _ string, s *specs.Spec) { s.Process = nil }, "no process"},
			{"relative cwd", func(t *testing.T, _ string, s *specs.Spec) { s.Process.Cwd = "tmp" }, "not absolute"},
			{"missing rootfs", func(t *testing.T, _ string, s *specs.Spec) { s.Root.Path = "no-such-dir" }, "no-such-dir"},
			{"root symlink out of the bundle", func(t *testing.T, bundle string, s *specs.Spec) {
				if err := os.Symlink("/", filepath.Join(bundle, "escape")); err != nil {
					t.Fatal(err)
				}
				s.Root.Path = "escape"
			}, "escape"},
			{"root dotdot", func(t *testing.T, _ string, s *specs.Spec) { s.Root.Path = "../.." }, ".."},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				ctx := withTimeout(t, time.Minute)
				bundle, spec := busyboxBundle(t, "true")
				tc.change(t, bundle, spec)
				id := "bad-" + strings.ReplaceAll(tc.name, " ", "-")
				ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: id, Bundle: bundle, Spec: spec})
				if err == nil {
					deleteContainer(t, ctr)
					t.Fatal("created")
				}
				t.Logf("error: %v", err)
				if !errdefs.IsInvalidArgument(err) && !errdefs.IsNotFound(err) {
					t.Errorf("error class: %v, want invalid-argument or not-found", err)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error does not mention %q: %v", tc.want, err)
				}
				if m, err := e2e.MountsUnder(filepath.Join(c.Runtime.StateDir, "ctr", "mounts", id)); err != nil || len(m) > 0 {
					t.Errorf("mounts left: %v (%v)", m, err)
				}
				if _, err := os.Stat(filepath.Join(c.Runtime.StateDir, "ctr", "mounts", id)); err == nil {
					t.Error("container directory left in the shared storage")
				}
				if _, err := sb.Container(id); !errdefs.IsNotFound(err) {
					t.Errorf("failed container still registered: %v", err)
				}
			})
		}
	})

	t.Run("duplicate id", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		bundle, spec := busyboxBundle(t, "sleep", "1000")
		a, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "dup", Bundle: bundle, Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		defer deleteContainer(t, a)
		if _, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "dup", Bundle: bundle, Spec: spec}); !errdefs.IsAlreadyExists(err) {
			t.Errorf("second create: %v, want already-exists", err)
		}
	})

	if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// TestContainerVMGone kills QEMU while a Wait is pending: the wait fails
// saying the VM exited, and Stop still removes everything.
func TestContainerVMGone(t *testing.T) {
	c := containerConfig(t)
	sb := startSandbox(t, c, "gone")
	ctx := withTimeout(t, time.Minute)
	bundle, spec := busyboxBundle(t, "sleep", "1000")
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "victim", Bundle: bundle, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctr.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := ctr.Wait(ctx)
		waited <- err
	}()
	time.Sleep(500 * time.Millisecond)
	if err := syscall.Kill(sb.VM().Describe().PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		t.Logf("wait error: %v", err)
		if err == nil {
			t.Fatal("wait succeeded after the vm was killed")
		}
		if !hypervisor.IsExited(err) && !errdefs.IsUnavailable(err) {
			t.Errorf("wait error does not say the vm is gone: %v", err)
		}
		if !strings.Contains(err.Error(), "vm exited") {
			t.Errorf("wait error does not say the vm exited: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("wait still pending 30s after the vm was killed")
	}
	if err := ctr.Signal(ctx, syscall.SIGTERM, false); err == nil {
		t.Error("signal to a dead vm succeeded")
	}
	if err := ctr.Delete(ctx, true); err != nil {
		t.Errorf("delete after the vm died: %v", err)
	}
	if err := sb.Stop(ctx); err != nil {
		t.Logf("stop after the vm died: %v", err)
	}
}

// withoutHullLog drops the hull command's own log lines (logfmt, with a
// time and a level) from its stderr.
func withoutHullLog(s string) string {
	var kept []string
	for _, l := range strings.SplitAfter(s, "\n") {
		if strings.HasPrefix(l, `time="`) && strings.Contains(l, " level=") {
			continue
		}
		kept = append(kept, l)
	}
	return strings.Join(kept, "")
}

// TestContainerHullRun runs the built hull binary.
func TestContainerHullRun(t *testing.T) {
	c := containerConfig(t)
	cfgPath := writeHullConfig(t, c)
	hull := filepath.Join(env.binDir, "hull")
	run := func(t *testing.T, args ...string) (string, string, int) {
		t.Helper()
		ctx := withTimeout(t, 2*time.Minute)
		cmd := exec.CommandContext(ctx, hull, append([]string{"--config", cfgPath, "run"}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	}

	t.Run("status", func(t *testing.T) {
		bundle, _ := busyboxBundle(t, "sh", "-c", "echo out; echo err >&2; exit 3")
		stdout, stderr, code := run(t, "--bundle", bundle, "--id", "run-status")
		// hull's own warnings (the fall back to TCG here) share stderr
		// with the container's.
		stderr = withoutHullLog(stderr)
		if stdout != "out\n" || stderr != "err\n" || code != 3 {
			t.Errorf("hull run: stdout %q stderr %q status %d, want \"out\\n\" \"err\\n\" 3", stdout, stderr, code)
		}
	})
	t.Run("signal status", func(t *testing.T) {
		// Without a PID namespace of its own the shell is not an init
		// that the kernel protects from its own SIGKILL.
		bundle, spec := busyboxBundle(t, "sh", "-c", "kill -KILL $$")
		spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
		writeSpec(t, bundle, spec)
		_, stderr, code := run(t, "--bundle", bundle, "--id", "run-kill")
		if code != 137 {
			t.Errorf("hull run of a killed shell: status %d (stderr %q), want 137", code, stderr)
		}
	})
	t.Run("malformed config.json", func(t *testing.T) {
		bundle, _ := busyboxBundle(t, "true")
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte("{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {,\n}"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, stderr, code := run(t, "--bundle", bundle, "--id", "run-bad")
		if code == 0 || !strings.Contains(stderr, filepath.Join(bundle, "config.json")+":3:") {
			t.Errorf("hull run with a malformed config.json: status %d stderr %q, want an error naming the file and line 3", code, stderr)
		}
	})
	t.Run("interrupted during boot", func(t *testing.T) {
		bundle, _ := busyboxBundle(t, "echo", "never")
		ctx := withTimeout(t, 2*time.Minute)
		cmd := exec.CommandContext(ctx, hull, "--config", cfgPath, "run", "--bundle", bundle, "--id", "run-int")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// QEMU's pid file: the VM is booting (under TCG for seconds).
		pidFile := filepath.Join(sandbox.StateDir(c.Runtime.StateDir, "run-int"), "qemu.pid")
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(pidFile); err == nil {
				break
			}
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				t.Fatalf("no %s within a minute; stderr %q", pidFile, stderr.String())
			}
		}
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		// 128 + SIGINT, a message, and nothing left (the leak check of
		// containerConfig's cleanup looks for processes, state and cgroups).
		if code := cmd.ProcessState.ExitCode(); code != 130 || !strings.Contains(stderr.String(), "interrupted by interrupt") || strings.Contains(stdout.String(), "never") {
			t.Errorf("hull run interrupted during boot: status %d stdout %q stderr %q, want 130 and the reason", code, stdout.String(), stderr.String())
		}
	})
	t.Run("sigterm forwarded", func(t *testing.T) {
		// The shell is PID 1: without a trap it would ignore SIGTERM.
		bundle, _ := busyboxBundle(t, "sh", "-c", "trap 'exit 143' TERM; sleep 1000 & echo started; wait")
		ctx := withTimeout(t, 2*time.Minute)
		cmd := exec.CommandContext(ctx, hull, "--config", cfgPath, "run", "--bundle", bundle, "--id", "run-term")
		var stdout e2e.SyncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stdout.WaitFor(t, "started", time.Minute)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 143 {
			t.Errorf("hull run after SIGTERM: status %d, want 143", code)
		}
	})
}

// TestContainerCleanup kills a `hull run` with SIGKILL and has
// sandbox.Cleanup remove what it left.
func TestContainerCleanup(t *testing.T) {
	c := containerConfig(t)
	cfgPath := writeHullConfig(t, c)
	bundle, _ := busyboxBundle(t, "sh", "-c", "echo started; sleep 1000")
	ctx := withTimeout(t, 2*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfgPath, "run", "--bundle", bundle, "--id", "orphan")
	var stdout e2e.SyncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdout.WaitFor(t, "started", time.Minute)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err := sandbox.Cleanup(context.Background(), c.Runtime.StateDir, "orphan"); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	if err := sandbox.Cleanup(context.Background(), c.Runtime.StateDir, "orphan"); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}

// startTTY starts a busybox container running script in sh with an 80x24
// terminal, and returns it with the write end of its input and its output.
// The container is deleted when the test ends.
func startTTY(ctx context.Context, t *testing.T, sb *sandbox.Sandbox, id, script string) (*sandbox.Container, *io.PipeWriter, *e2e.SyncBuffer) {
	t.Helper()
	bundle, spec := busyboxBundle(t, "sh", "-c", script)
	spec.Process.Terminal = true
	stdinR, stdinW := io.Pipe()
	out := &e2e.SyncBuffer{}
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: id, Bundle: bundle, Spec: spec,
		Stdio: sandbox.IO{Stdin: stdinR, Stdout: out, Terminal: true, Width: 80, Height: 24}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteContainer(t, ctr) })
	if err := ctr.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return ctr, stdinW, out
}
