package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestLimitsFor(t *testing.T) {
	cfg := CgroupConfig{MemoryOverheadMiB: 256, CPUOverheadMilli: 250}
	got := limitsFor(cfg, 2, 1024)
	want := hostcgroup.Limits{MemoryBytes: 1280 << 20, CPUQuotaUs: 225000, CPUPeriodUs: 100000}
	if got != want {
		t.Errorf("limits %+v, want %+v", got, want)
	}
}

// limitReadingVM records the sandbox cgroup's memory limit when asked to
// grow, then refuses.
type limitReadingVM struct {
	staticVM
	file string
	seen *string
}

func (v limitReadingVM) Resize(context.Context, uint32, uint32) (hypervisor.Size, error) {
	b, _ := os.ReadFile(v.file)
	*v.seen = strings.TrimSpace(string(b))
	return hypervisor.Size{}, errdefs.ErrInvalidArgument
}

// TestResizeRaisesCgroupFirst checks that the cgroup limit covers the new
// memory before the driver adds it.
func TestResizeRaisesCgroupFirst(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpu memory pids"), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := hostcgroup.Create(hostcgroup.FS{Unified: root}, "/pod/sb")
	if err != nil {
		t.Fatal(err)
	}
	// What the kernel shows once the parent enabled them.
	if err := os.WriteFile(filepath.Join(root, "pod/sb/cgroup.controllers"), []byte("cpu memory pids"), 0o644); err != nil {
		t.Fatal(err)
	}
	hc := &hostCgroup{cfg: CgroupConfig{Path: "/pod/sb", MemoryOverheadMiB: 256, CPUOverheadMilli: 250}, g: g}
	if err := hc.setLimits(1, 512); err != nil {
		t.Fatal(err)
	}
	var seen string
	file := filepath.Join(root, "pod/sb/memory.max")
	s := &Sandbox{id: "sb", state: StateRunning, vm: limitReadingVM{file: file, seen: &seen}, cgroup: hc}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.Resize(ctx, 2, 2048); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("resize: %v", err)
	}
	got, _ := strconv.ParseInt(seen, 10, 64)
	if min := int64(2048+256) << 20; got < min {
		t.Errorf("memory.max was %q when the driver grew the VM, want at least %d", seen, min)
	}
	cpu, _ := os.ReadFile(filepath.Join(root, "pod/sb/cpu.max"))
	if string(cpu) != "225000 100000" {
		t.Errorf("cpu.max %q, want 2.25 CPUs", cpu)
	}
	// Growing never lowers the limits.
	if err := hc.grow(1, 1024); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(file)
	if v, _ := strconv.ParseInt(string(b), 10, 64); v < int64(2048+256)<<20 {
		t.Errorf("limit lowered to %s", b)
	}
}
