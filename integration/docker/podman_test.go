package docker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// podmanBin is Debian's Podman (4.3).
const podmanBin = "/usr/bin/podman"

// podmanBridge is the bridge of Podman's default network (CNI).
const podmanBridge = "cni-podman0"

// podman runs Debian's Podman, rootful, with storage, run root and
// configuration of its own, hull-runtime registered as "hull" in its
// containers.conf.
type podman struct {
	dir, stateRoot string
	global         []string
	env            []string
}

func newPodman(t *testing.T) *podman {
	t.Helper()
	needTools(t, "podman", "Podman 4.3", podmanBin)
	p := &podman{dir: filepath.Join(env.workDir, "p")}
	p.stateRoot = filepath.Join(p.dir, "hull")
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	hullConfig := writeHullConfig(t, p.dir, p.stateRoot)
	// containers.conf names a runtime by its paths alone: a wrapper adds
	// the suite's hull configuration.
	wrapper := filepath.Join(p.dir, "hull-runtime")
	if err := os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\nexec %s --hull-config %s \"$@\"\n", env.runtime, hullConfig)), 0o755); err != nil { //nolint:gosec // an executable wrapper
		t.Fatal(err)
	}
	conf := filepath.Join(p.dir, "containers.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"hull\"\n\n[engine.runtimes]\nhull = [%q]\n", wrapper)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.env = append(os.Environ(), "CONTAINERS_CONF="+conf)
	p.global = []string{
		"--root", filepath.Join(p.dir, "storage"), "--runroot", filepath.Join(p.dir, "run"),
		"--tmpdir", filepath.Join(p.dir, "tmp"), "--storage-driver", "overlay",
		// Networks of its own: a reset must not touch the host's.
		"--network-config-dir", filepath.Join(p.dir, "net"),
	}
	// Podman's default network's bridge: removed after the suite when
	// the suite's containers made it.
	_, bridgeErr := os.Stat("/sys/class/net/" + podmanBridge)
	t.Cleanup(func() {
		p.run("rm", "-af", "-t", "0")
		if os.IsNotExist(bridgeErr) {
			_ = exec.Command("ip", "link", "del", podmanBridge).Run()
		}
		// Unmounts the storage and removes what podman made here.
		p.run("system", "reset", "-f")
		e2e.CheckClean(t, 30*time.Second, func() []string { return leftoversOf(p.stateRoot, p.dir, "") })
	})
	p.mustRun(t, "load", "-i", env.image)
	return p
}

func (p *podman) run(args ...string) (string, string, int) {
	return e2e.RunCLI(func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, podmanBin, append(append([]string(nil), p.global...), args...)...)
		cmd.Env = p.env
		return cmd
	})
}

func (p *podman) mustRun(t testing.TB, args ...string) string {
	t.Helper()
	return e2e.MustRunCLI(t, "podman", p.run, args...)
}

// TestPodman runs Podman's main container operations on hull-runtime
// (rootful, through conmon).
func TestPodman(t *testing.T) {
	p := newPodman(t)

	t.Run("run prints and exits with the status", func(t *testing.T) {
		out, errOut, code := p.run("run", "--rm", "--runtime", "hull", imageName, "sh", "-c", "echo hi; exit 3")
		if !strings.Contains(out, "hi") || code != 3 {
			t.Errorf("stdout %q stderr %q status %d; want hi and 3", out, errOut, code)
		}
	})

	t.Run("exec, published port, stop", func(t *testing.T) {
		p.mustRun(t, "run", "-d", "--name", "web", "--runtime", "hull", "-p", "127.0.0.1:18081:80", imageName,
			"sh", "-c", "mkdir -p /www && echo hello-web > /www/index.html && echo ready && exec httpd -f -p 80 -h /www")
		waitLog(t, p.run, "web", "ready")
		if out := p.mustRun(t, "exec", "web", "cat", "/www/index.html"); !strings.Contains(out, "hello-web") {
			t.Errorf("exec: %q", out)
		}
		assertInVM(t, p.mustRun(t, "exec", "web", "uname", "-r"))
		if rt := strings.TrimSpace(p.mustRun(t, "inspect", "-f", "{{.OCIRuntime}}", "web")); rt != "hull" {
			t.Errorf("the container's runtime is %q, want hull", rt)
		}
		des, err := os.ReadDir(p.stateRoot)
		des = slices.DeleteFunc(des, func(de os.DirEntry) bool {
			return sandbox.IsNodeState(de.Name())
		})
		if err != nil || len(des) != 1 {
			t.Errorf("hull's state root holds %d sandboxes (%v), want the container's", len(des), err)
		}
		if _, _, code := p.run("exec", "web", "sh", "-c", "exit 5"); code != 5 {
			t.Errorf("exec exit status %d, want 5", code)
		}
		if body := httpGet(t, "http://127.0.0.1:18081/"); body != "hello-web\n" {
			t.Errorf("GET from the host: %q", body)
		}
		p.mustRun(t, "stop", "-t", "2", "web")
		if code := strings.TrimSpace(p.mustRun(t, "inspect", "-f", "{{.State.ExitCode}}", "web")); code != "137" {
			t.Errorf("exit code after the grace period %s, want 137", code)
		}
		p.mustRun(t, "rm", "web")
	})

	// A pod's members join its infra container's namespaces by the
	// infra's PID, a hull-runtime supervisor whose VM no other container
	// can join (docs/docker-podman.md): the refusal names the way out.
	t.Run("pod member refused, naming the alternative", func(t *testing.T) {
		p.mustRun(t, "pod", "create", "--name", "pod1")
		defer p.run("pod", "rm", "-f", "-t", "0", "pod1")
		out, errOut, code := p.run("run", "--rm", "--pod", "pod1", "--runtime", "hull", imageName, "true")
		t.Logf("podman run --pod: exit %d: %s%s", code, out, errOut)
		if code == 0 || !strings.Contains(errOut, "hull-runtime container") || !strings.Contains(errOut, "--network NAME") {
			t.Errorf("podman run --pod: exit %d, %s%s; want a refusal that names the infra container and the alternative", code, out, errOut)
		}
	})
}
