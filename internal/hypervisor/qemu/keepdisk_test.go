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
	"github.com/hull-runtime/hull/internal/procfs"
)

// openersOf lists the processes with a descriptor open on the file path
// (by device and inode), as "pid/fd".
func openersOf(t *testing.T, path string) []string {
	t.Helper()
	o, err := procfs.Openers(path)
	if err != nil {
		t.Fatal(err)
	}
	found := make([]string, 0, len(o))
	for _, d := range o {
		found = append(found, d.String())
	}
	return found
}

// TestKeepDiskRealQEMU: a real guest that refuses to give back its
// hot-added disks (it masks the ACPI hotplug GPE, so QEMU's eject requests
// go unanswered), three of them as an erofs root of two layers and a
// writable one has. RemoveBlock of the three returns within one unplug
// bound, not one per disk; QEMU keeps the devices, their ports and the
// images' descriptors, so another disk finds no port; once the VM stops
// no process holds an image.
func TestKeepDiskRealQEMU(t *testing.T) {
	const disks = 3
	v := newTestVMWith(t, MachineQ35, func(c *hypervisor.Config) { c.HotplugBlocks = disks }, "hulltest=keepdisk")
	v.unplugWait = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitConsole(t, v, testMarker, 90*time.Second)

	var (
		imgs []string
		ids  []string
	)
	for i := range disks {
		img := filepath.Join(t.TempDir(), "disk.img")
		if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		id := "kept" + strconv.Itoa(i)
		if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: id, File: f, Serial: id}); err != nil {
			_ = f.Close()
			t.Fatal(err)
		}
		// QEMU holds its own copy, as the sandbox leaves it.
		_ = f.Close()
		imgs, ids = append(imgs, img), append(ids, id)
	}
	waitConsole(t, v, testKeepDisk, 90*time.Second)
	qemuPID := strconv.Itoa(v.Describe().PID)
	held := func(img string) bool {
		for _, o := range openersOf(t, img) {
			if filepath.Dir(o) == qemuPID {
				return true
			}
		}
		return false
	}
	for _, img := range imgs {
		if !held(img) {
			t.Fatalf("qemu (pid %s) does not hold %s after AddBlock; openers %v", qemuPID, img, openersOf(t, img))
		}
	}

	start := time.Now()
	if err := v.RemoveBlock(ctx, ids...); err != nil {
		t.Fatalf("RemoveBlock of disks the guest keeps: %v, want nil after the bound", err)
	}
	took := time.Since(start)
	t.Logf("RemoveBlock of %d kept disks returned after %s (bound %s)", disks, took.Round(time.Millisecond), v.unplugWait)
	// Waiting for each disk in turn takes at least the bound per disk.
	if took >= disks*v.unplugWait {
		t.Errorf("RemoveBlock took %s: the bound of %s once per disk, not once for all", took, v.unplugWait)
	}
	for _, img := range imgs {
		if !held(img) {
			t.Fatalf("the guest kept the disks, yet qemu no longer holds %s: the guest did not refuse (test hook broken?)", img)
		}
	}
	g, err := os.CreateTemp(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Close() }()
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "other", File: g}); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("AddBlock into the ports of the kept disks: got %v, want class %v", err, errdefs.ErrResourceExhausted)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := v.Stop(sctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, img := range imgs {
		if o := openersOf(t, img); len(o) > 0 {
			t.Errorf("%s is still open after the vm stopped: %v", img, o)
		}
	}
}
