package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// warmConfig is c's configuration of a warm sandbox as a VM factory makes
// it (startWarm's), with the warm-up on or off; the warm-up runs the
// hull-agent binary of HULL_BIN_DIR.
func warmConfig(t testing.TB, c *config.Config, warmUp bool) sandbox.Config {
	t.Helper()
	id, err := sandbox.NewWarmID()
	if err != nil {
		t.Fatal(err)
	}
	wc, err := launch.SandboxConfig(c, id)
	if err != nil {
		t.Fatal(err)
	}
	wc.VM.HotplugNICs = 2
	if warmUp {
		wc.WarmUp, wc.WarmUpBinary = true, filepath.Join(env.binDir, "hull-agent")
	}
	return wc
}

// stateTree lists what is under a sandbox's state directory: every path
// below its shared-storage directories (mounts, shared, staging), the
// names at its top, and the mount points below it from
// /proc/self/mountinfo, each relative to the directory, sorted. Files
// that belong to the VM (logs, sockets, the record) are listed by name
// only.
func stateTree(t *testing.T, dir string) (entries, mounts []string) {
	t.Helper()
	top, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range top {
		entries = append(entries, e.Name())
	}
	for _, sub := range []string{"mounts", "shared", "staging"} {
		root := filepath.Join(dir, sub)
		err := filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if p != root {
				rel, _ := filepath.Rel(dir, p)
				entries = append(entries, rel)
			}
			return nil
		})
		if err != nil && !os.IsNotExist(err) {
			t.Fatalf("walking %s: %v", root, err)
		}
	}
	ms, err := e2e.MountsUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if rel, err := filepath.Rel(dir, m); err == nil {
			mounts = append(mounts, rel)
		}
	}
	slices.Sort(entries)
	slices.Sort(mounts)
	return entries, mounts
}

// TestWarmUp boots a warm sandbox whose start runs the warm-up (a
// throwaway container of the hull-agent binary) and checks that it ran
// (its "warm up" phase) and left nothing: the guest knows no container of
// its ID, the state directory and its mounts are as a warm sandbox's
// without warm-up, booted alongside; then a pod adopts it (its guest
// sandbox is created anew) and a busybox container runs in it. A warm-up
// that fails fails StartWarm and leaves nothing (the test configuration's
// leak checks: no process, state directory, cgroup or mount).
func TestWarmUp(t *testing.T) {
	t.Run("adopted", func(t *testing.T) {
		c := containerConfig(t)
		c.Hypervisor.QEMU.Machine = qemu.MachineQ35
		ctx := withTimeout(t, 5*time.Minute)

		// The reference: a warm sandbox as boot leaves it.
		ref, err := sandbox.StartWarm(ctx, warmConfig(t, c, false))
		if err != nil {
			t.Fatalf("starting the reference warm sandbox: %v", err)
		}
		refEntries, refMounts := stateTree(t, ref.StateDir())
		if err := ref.Stop(withTimeout(t, time.Minute)); err != nil {
			t.Fatalf("stopping the reference warm sandbox: %v", err)
		}

		start := time.Now()
		sb, err := sandbox.StartWarm(ctx, warmConfig(t, c, true))
		if err != nil {
			t.Fatalf("starting the warm sandbox with warm-up: %v", err)
		}
		stopped := false
		t.Cleanup(func() {
			if !stopped {
				_ = sb.Stop(context.Background())
			}
		})
		phases := sb.BootPhases()
		t.Logf("warm start with warm-up in %s: %v", time.Since(start).Round(time.Millisecond), phases)
		if i := slices.IndexFunc(phases, func(p sandbox.Phase) bool { return p.Name == "warm up" }); i != len(phases)-1 {
			t.Fatalf("phases %v: want \"warm up\" last", phases)
		}
		entries, mounts := stateTree(t, sb.StateDir())
		if !slices.Equal(entries, refEntries) {
			t.Errorf("state directory after warm-up:\n%q\nwant as after a boot:\n%q", entries, refEntries)
		}
		if !slices.Equal(mounts, refMounts) {
			t.Errorf("mounts under the state directory after warm-up:\n%q\nwant as after a boot:\n%q", mounts, refMounts)
		}
		_, err = sb.Agent().Containers().ListProcesses(ctx, &agent.ListProcessesRequest{ContainerId: sandbox.WarmUpContainerID})
		if !errdefs.IsNotFound(err) {
			t.Errorf("the guest's warm-up container: got %v, want not found", err)
		}
		if _, err := sb.Container(sandbox.WarmUpContainerID); !errdefs.IsNotFound(err) {
			t.Errorf("the host's record of the warm-up container: got %v, want not found", err)
		}

		pc := adoptConfig(t, c, "warmed-pod")
		if err := sb.Adopt(ctx, pc); err != nil {
			t.Fatalf("adopting: %v", err)
		}
		bundle, spec := busyboxBundle(t, "sh", "-c", "echo ran")
		r := runContainer(t, sb, "warmed-ctr", bundle, spec)
		if r.status != 0 || !strings.HasPrefix(r.stdout, "ran\n") {
			t.Fatalf("container in the adopted sandbox: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
		}
		stopped = true
		if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
			t.Errorf("stopping: %v", err)
		}
	})

	t.Run("fails", func(t *testing.T) {
		c := containerConfig(t)
		c.Hypervisor.QEMU.Machine = qemu.MachineQ35
		ctx := withTimeout(t, 3*time.Minute)
		// A script: the guest finds no interpreter in the warm-up root.
		script := filepath.Join(t.TempDir(), "exit3")
		if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		wc := warmConfig(t, c, true)
		wc.WarmUpBinary = script
		sb, err := sandbox.StartWarm(ctx, wc)
		if err == nil {
			_ = sb.Stop(context.Background())
			t.Fatal("a warm start whose warm-up cannot run succeeded")
		}
		if !strings.Contains(err.Error(), "warm up") {
			t.Errorf("error %v does not name the warm up step", err)
		}
		t.Logf("failed: %v", err)
		if _, err := os.Stat(sandbox.StateDir(c.Runtime.StateDir, wc.ID)); !os.IsNotExist(err) {
			t.Errorf("state directory after a failed warm-up: %v", err)
		}
		// containerConfig's checks: no process, cgroup, mount or state left.
	})
}
