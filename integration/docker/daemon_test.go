package docker

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// Debian's Docker (docker.io): never another docker found on PATH.
const (
	dockerd   = "/usr/sbin/dockerd"
	dockerCLI = "/usr/bin/docker"
)

// The suite's bridge and its network: Docker's default bridge would be
// docker0, which a Docker of the host may own.
const (
	bridgeName = "hulldk0"
	bridgeAddr = "172.31.250.1/24"
	// daemonLock serializes the suite's daemons (bridge, published port).
	daemonLock = "/run/lock/hull-docker.lock"
)

// daemon is one dockerd of the suite with hull-runtime as runtime "hull".
type daemon struct {
	dir, socket string
	// stateRoot is the hull sandboxes' state directory.
	stateRoot string
	cmd       *exec.Cmd
	log       *os.File
	lock      *os.File
}

// startDaemon starts dockerd, loads the busybox image and registers the
// teardown (containers, daemon, bridge) and the leak check.
func startDaemon(t *testing.T) *daemon {
	t.Helper()
	needTools(t, "docker.io", "Docker 20.10", dockerd, dockerCLI)
	d := &daemon{dir: filepath.Join(env.workDir, "d")}
	d.socket = filepath.Join(d.dir, "docker.sock")
	d.stateRoot = filepath.Join(d.dir, "hull")
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var err error
	if d.lock, err = os.OpenFile(daemonLock, os.O_CREATE|os.O_RDWR, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(d.lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.lock.Close() })
	// A bridge of a crashed run is ours now.
	_ = exec.Command("ip", "link", "del", bridgeName).Run()
	for _, args := range [][]string{
		{"link", "add", bridgeName, "type", "bridge"},
		{"addr", "add", bridgeAddr, "dev", bridgeName},
		{"link", "set", bridgeName, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridgeName).Run() })

	hullConfig := writeHullConfig(t, d.dir, d.stateRoot)
	// The entry docs/docker-podman.md gives, with the suite's config.
	daemonJSON, err := json.Marshal(map[string]any{
		"runtimes": map[string]any{"hull": map[string]any{
			"path":        env.runtime,
			"runtimeArgs": []string{"--hull-config", hullConfig},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(d.dir, "daemon.json")
	if err := os.WriteFile(cfgPath, daemonJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	if d.log, err = os.Create(filepath.Join(d.dir, "dockerd.log")); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(dockerd,
		"--config-file", cfgPath,
		"--data-root", filepath.Join(d.dir, "data"),
		"--exec-root", filepath.Join(d.dir, "x"),
		"--pidfile", filepath.Join(d.dir, "docker.pid"),
		"-H", "unix://"+d.socket,
		"--bridge", bridgeName,
		// The host's firewall is not the suite's: published ports go
		// through docker-proxy.
		"--iptables=false", "--ip-masq=false",
	)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(d.log.Name())
			t.Logf("dockerd log (tail):\n%s", e2e.LastLines(string(b), 40))
		}
		// What a failed case left running goes first.
		if ids := strings.Fields(d.mustRun(t, "ps", "-aq")); len(ids) > 0 {
			d.run(append([]string{"rm", "-f"}, ids...)...)
		}
		e2e.Stop(d.cmd, 30*time.Second)
		_ = d.log.Close()
		d.checkClean(t)
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, _, code := d.run("info"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.log.Name())
			t.Fatalf("dockerd did not answer within 60s:\n%s", e2e.LastLines(string(b), 30))
		}
		time.Sleep(300 * time.Millisecond)
	}
	d.mustRun(t, "load", "-i", env.image)
	return d
}

// command is the docker CLI against this daemon.
func (d *daemon) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, dockerCLI, append([]string{"-H", "unix://" + d.socket}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(d.dir, "cli"))
	return cmd
}

// run runs the docker CLI (bounded to 4 minutes) and returns its stdout,
// stderr and exit status.
func (d *daemon) run(args ...string) (string, string, int) {
	return e2e.RunCLI(func(ctx context.Context) *exec.Cmd {
		return d.command(ctx, args...)
	})
}

func (d *daemon) mustRun(t testing.TB, args ...string) string {
	t.Helper()
	return e2e.MustRunCLI(t, "docker", d.run, args...)
}

// leftovers lists what the containers left (leftoversOf).
func (d *daemon) leftovers() []string {
	return leftoversOf(d.stateRoot, d.dir, filepath.Join(d.dir, "x", "runtime-runc", "moby"))
}

// leftoversOf lists processes that mention dir (qemu and virtiofsd name
// the hull state root, the supervisors their configuration or runtime
// root), mounts below stateRoot, sandbox state directories and, when
// runtimeRoot is set, container state directories of hull-runtime.
func leftoversOf(stateRoot, dir, runtimeRoot string) []string {
	var left []string
	for _, p := range e2e.Processes() {
		if strings.Contains(p.Cmdline, stateRoot) || strings.Contains(p.Cmdline, "_supervise") && strings.Contains(p.Cmdline, dir) {
			left = append(left, p.String())
		}
	}
	ms, err := e2e.MountsUnder(stateRoot)
	if err != nil {
		left = append(left, err.Error())
	}
	for _, m := range ms {
		left = append(left, "mount "+m)
	}
	if des, err := os.ReadDir(stateRoot); err == nil {
		for _, de := range des {
			// The node's boot slots (empty lock files) and start
			// counts stay.
			if p := filepath.Join(stateRoot, de.Name()); !sandbox.IsNodeState(de.Name()) {
				left = append(left, "state "+p)
			}
		}
	}
	if runtimeRoot != "" {
		if des, err := os.ReadDir(runtimeRoot); err == nil {
			for _, de := range des {
				left = append(left, "runtime state "+de.Name())
			}
		}
	}
	return left
}

// checkClean fails the test when anything is left, after a moment for the
// last supervisors to exit.
func (d *daemon) checkClean(t testing.TB) {
	t.Helper()
	e2e.CheckClean(t, 30*time.Second, d.leftovers)
}
