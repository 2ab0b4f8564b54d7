package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// TestStateDirFull starts a sandbox whose state root is a full file
// system: the start fails with an error within its bounds and leaves
// nothing (checked while the file system is still mounted, and by
// testConfig's leak check: processes, cgroups); once there is room again
// the next start works.
func TestStateDirFull(t *testing.T) {
	c := testConfig(t)
	c.Image.AssetsDir, _ = hullKernelAssets(t)
	c.Agent.Transport = "serial"
	root := c.Runtime.StateDir
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0711", "hull-full", root).CombinedOutput(); err != nil {
		t.Fatalf("mounting a small tmpfs: %v: %s", err, out)
	}
	// Runs before testConfig's leak check, which then sees the empty
	// directory below: the entries are checked here while mounted.
	t.Cleanup(func() {
		if err := syscall.Unmount(root, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", root, err)
		}
	})
	fill := filepath.Join(root, "fill")
	if err := fillUp(fill); err != nil {
		t.Fatal(err)
	}
	sc, err := launch.SandboxConfig(c, "full")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = sandbox.Start(withTimeout(t, 3*time.Minute), sc)
	t.Logf("start on a full state root failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("a sandbox started on a full state root")
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("the error does not say the device is full: %v", err)
	}
	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if !sandbox.IsNodeState(e.Name()) {
			t.Errorf("the failed start left %s", e.Name())
		}
	}
	sb := startSandbox(t, c, "after-full")
	if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
}

// TestGuestMemoryExhausted runs a container without a memory limit that
// takes all the guest's memory: the guest kernel OOM-kills it (137), and
// the pod lives on, running the next container.
func TestGuestMemoryExhausted(t *testing.T) {
	c := containerConfig(t)
	c.Image.AssetsDir, _ = hullKernelAssets(t)
	c.Hypervisor.MemoryMiB = 256
	sb := startSandbox(t, c, "memhog")
	bundle, spec := busyboxBundle(t, "tail", "/dev/zero")
	start := time.Now()
	r := runContainer(t, sb, "hog", bundle, spec)
	t.Logf("memory hog ended after %s with %d (stderr %q)", time.Since(start).Round(time.Millisecond), r.status, r.stderr)
	if r.status != 137 {
		t.Errorf("memory hog ended with %d, want 137 (OOM-killed)", r.status)
	}
	bundle, spec = busyboxBundle(t, "echo", "alive")
	if r := runContainer(t, sb, "after", bundle, spec); r.stdout != "alive\n" || r.status != 0 {
		t.Errorf("the next container: stdout %q, status %d; want \"alive\" and 0", r.stdout, r.status)
	}
	if sb.State() != sandbox.StateRunning {
		t.Errorf("sandbox is %s after the guest OOM", sb.State())
	}
}

// fillUp writes path until its file system is full.
func fillUp(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }() // the writes' errors are what counts
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return err
		}
	}
}

// TestVMMCgroupLimit fills the guest's memory while the sandbox's host
// cgroup leaves QEMU 8 MiB beyond the guest's memory, less than QEMU's own
// memory (its heap alone is over 13 MiB before the guest runs, under KVM
// too): the host kernel kills QEMU at the cgroup's limit, and the
// container's wait fails saying the VM exited because its cgroup reached
// its memory limit. Stop still removes everything (testConfig's leak
// check). The overhead is set on the sandbox's configuration, below the
// configuration file's minimum (64 MiB), which an idle QEMU under TCG no
// longer outgrows with its 44 MiB translation cache.
func TestVMMCgroupLimit(t *testing.T) {
	c := containerConfig(t)
	c.Image.AssetsDir, _ = hullKernelAssets(t)
	// An idle VM charges far less than its memory, so the pod starts;
	// the guest's memory filled, QEMU's own memory no longer fits.
	c.Hypervisor.MemoryMiB = 512
	sb := startSandboxEdited(t, c, "vmm-oom", func(sc *sandbox.Config) { sc.Cgroup.MemoryOverheadMiB = 8 })
	ctx := withTimeout(t, 3*time.Minute)
	bundle, spec := busyboxBundle(t, "tail", "/dev/zero")
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "hog", Bundle: bundle, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctr.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := ctr.Wait(ctx)
	t.Logf("memory hog: status %+v, error %v", st, err)
	if err == nil {
		t.Fatalf("the hog ended with %d inside a live VM; want QEMU killed at its cgroup's limit", st.Code)
	}
	if !strings.Contains(err.Error(), "reached its memory limit") || !hypervisor.IsExited(err) {
		t.Errorf("the error does not say the VM's cgroup reached its memory limit: %v", err)
	}
	if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
		t.Logf("stopping the sandbox of a killed VM: %v", err)
	}
}
