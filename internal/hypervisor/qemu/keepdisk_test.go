package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// openersOf lists the processes with a descriptor open on the file path
// (by device and inode), as "pid/fd".
func openersOf(t *testing.T, path string) []string {
	t.Helper()
	want, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	procs, _ := os.ReadDir("/proc")
	var found []string
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name(), "fd")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			if st, err := os.Stat(filepath.Join(dir, fd.Name())); err == nil && os.SameFile(st, want) {
				found = append(found, p.Name()+"/"+fd.Name())
			}
		}
	}
	return found
}

// TestKeepDiskRealQEMU: a real guest that refuses to give back a hot-added
// disk (it masks the ACPI hotplug GPE, so QEMU's eject request goes
// unanswered). RemoveBlock returns within its bound; QEMU keeps the
// device, its port and the image's descriptor, so another disk finds no
// port; once the VM stops no process holds the image.
func TestKeepDiskRealQEMU(t *testing.T) {
	v := newTestVMWith(t, MachineQ35, func(c *hypervisor.Config) { c.HotplugBlocks = 1 }, "hulltest=keepdisk")
	v.unplugWait = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitConsole(t, v, testMarker, 90*time.Second)

	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "kept", File: f, Serial: "kept"}); err != nil {
		_ = f.Close()
		t.Fatal(err)
	}
	// QEMU holds its own copy, as the sandbox leaves it.
	_ = f.Close()
	waitConsole(t, v, testKeepDisk, 90*time.Second)
	qemuPID := strconv.Itoa(v.Describe().PID)
	held := func() bool {
		for _, o := range openersOf(t, img) {
			if filepath.Dir(o) == qemuPID {
				return true
			}
		}
		return false
	}
	if !held() {
		t.Fatalf("qemu (pid %s) does not hold the image after AddBlock; openers %v", qemuPID, openersOf(t, img))
	}

	start := time.Now()
	if err := v.RemoveBlock(ctx, "kept"); err != nil {
		t.Fatalf("RemoveBlock of a disk the guest keeps: %v, want nil after the bound", err)
	}
	took := time.Since(start)
	t.Logf("RemoveBlock returned after %s (bound %s)", took.Round(time.Millisecond), v.unplugWait)
	if took > v.unplugWait+30*time.Second {
		t.Errorf("RemoveBlock took %s, bound %s", took, v.unplugWait)
	}
	if !held() {
		t.Fatalf("the guest kept the disk, yet qemu no longer holds the image: the guest did not refuse (test hook broken?)")
	}
	g, err := os.CreateTemp(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Close() }()
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "other", File: g}); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("AddBlock into the port of the kept disk: got %v, want class %v", err, errdefs.ErrResourceExhausted)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := v.Stop(sctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if o := openersOf(t, img); len(o) > 0 {
		t.Errorf("the image is still open after the vm stopped: %v", o)
	}
}
