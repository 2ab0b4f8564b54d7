package integration

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// TestHotplug grows a running q35 VM by a vCPU and 256 MiB, then by 256 MiB
// more, checks that the guest has them online and that a container's I/O through virtio-fs works
// in the new memory, and that sizes beyond the limits and microvm are
// refused.
func TestHotplug(t *testing.T) {
	t.Run("q35", func(t *testing.T) { testHotplugQ35(t, containerConfig(t)) })

	t.Run("microvm", func(t *testing.T) {
		c := testConfig(t)
		c.Hypervisor.QEMU.Machine = "microvm"
		c.Agent.Transport = "serial"
		c.Hypervisor.MaxVCPUs, c.Hypervisor.MaxMemoryMiB = 2, 1024
		sb := startSandbox(t, c, "hotplug-microvm")
		err := sb.Resize(withTimeout(t, time.Minute), 2, 768)
		if !errors.Is(err, errdefs.ErrNotImplemented) {
			t.Fatalf("resize on microvm: got %v, want a not-implemented error", err)
		}
		t.Logf("microvm: %v", err)
		if d := guestDetails(t, sb); d.GetCpus() != c.Hypervisor.VCPUs {
			t.Errorf("guest has %d cpus, want %d", d.GetCpus(), c.Hypervisor.VCPUs)
		}
	})
}

// testHotplugQ35 is TestHotplug on q35 with the guest image of c (a
// containerConfig): the test image, or the hull kernel's (hullkernel_test.go).
func testHotplugQ35(t *testing.T, c *config.Config) {
	c.Hypervisor.QEMU.Machine = "q35"
	c.Hypervisor.VCPUs, c.Hypervisor.MemoryMiB = 1, 512
	c.Hypervisor.MaxVCPUs, c.Hypervisor.MaxMemoryMiB = 2, 1024
	sb := startSandbox(t, c, "hotplug-q35")
	ctx := withTimeout(t, 2*time.Minute)

	before := guestDetails(t, sb)
	if before.GetCpus() != 1 {
		t.Fatalf("guest boots with %d cpus, want 1", before.GetCpus())
	}
	start := time.Now()
	if err := sb.Resize(ctx, 2, 512+256); err != nil {
		t.Fatalf("resize: %v", err)
	}
	t.Logf("resized in %s", time.Since(start).Round(time.Millisecond))
	after := guestDetails(t, sb)
	grew := int64(after.GetMemoryTotalBytes()-before.GetMemoryTotalBytes()) >> 20
	t.Logf("guest: %d -> %d cpus, MemTotal %d -> %d MiB (+%d)", before.GetCpus(), after.GetCpus(),
		before.GetMemoryTotalBytes()>>20, after.GetMemoryTotalBytes()>>20, grew)
	if after.GetCpus() != 2 {
		t.Errorf("guest has %d cpus online after the resize, want 2", after.GetCpus())
	}
	// The kernel keeps a little of the new memory for its page structs.
	if grew < 240 || grew > 256 {
		t.Errorf("guest memory grew by %d MiB, want about 256", grew)
	}

	// Growing to a size the VM has is a no-op; a second DIMM is a second
	// memory region for virtiofsd; what is beyond the limits is refused
	// and leaves the VM as it is.
	if err := sb.Resize(ctx, 2, 512); err != nil {
		t.Errorf("resize to the current size: %v", err)
	}
	if err := sb.Resize(ctx, 0, 1024); err != nil {
		t.Fatalf("second resize: %v", err)
	}
	if d := guestDetails(t, sb); d.GetMemoryTotalBytes()-after.GetMemoryTotalBytes() != 256<<20 {
		t.Errorf("guest MemTotal %d MiB after the second resize, want %d", d.GetMemoryTotalBytes()>>20, after.GetMemoryTotalBytes()>>20+256)
	}
	for _, tc := range []struct {
		name             string
		vcpus, memoryMiB uint32
	}{
		{"vcpus", 3, 0},
		{"memory", 0, 1024 + 128},
	} {
		if err := sb.Resize(ctx, tc.vcpus, tc.memoryMiB); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("resize beyond the %s limit: got %v, want an invalid-argument error", tc.name, err)
		}
	}

	// New allocations go to the hot-added memory (the Normal zone comes
	// before DMA32): a container writing and reading through virtio-fs
	// uses it for its buffers, which virtiofsd must have mapped.
	bundle, spec := busyboxBundle(t, "sh", "-c",
		"dd if=/dev/zero of=/tmp/f bs=1M count=64 2>/dev/null && md5sum /tmp/f && nproc && rm /tmp/f")
	r := runContainer(t, sb, "after-hotplug", bundle, spec)
	if r.status != 0 || !strings.Contains(r.stdout, "7f614da9329cd3aebf59b91aadc30bf0") {
		t.Errorf("container after the resize: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if f := strings.Fields(r.stdout); len(f) == 0 || f[len(f)-1] != "2" {
		t.Errorf("the container sees cpus %q, want 2", r.stdout)
	}
	if d := guestDetails(t, sb); len(d.GetWarnings()) > 0 {
		t.Errorf("guest warnings: %v", d.GetWarnings())
	}
}

func guestDetails(t *testing.T, sb *sandbox.Sandbox) *agent.GuestDetailsResponse {
	t.Helper()
	d, err := sb.System().GuestDetails(withTimeout(t, time.Minute), &agent.GuestDetailsRequest{})
	if err != nil {
		t.Fatalf("guest details: %v", err)
	}
	return d
}
