package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

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
		if filepath.Join(root, e.Name()) != sandbox.BootSlotsDir(root) {
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
