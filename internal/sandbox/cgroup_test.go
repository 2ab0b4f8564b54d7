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

// podCgroup makes a cgroup v2 tree in a temporary directory, its root
// showing the cpu, memory and pids controllers, and in it the group
// /pod/sb; with enabled, the group shows those controllers too, as the
// kernel does once the parent enabled them. It returns the tree's root.
func podCgroup(t *testing.T, enabled bool) (string, *hostcgroup.Group) {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpu memory pids"), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := hostcgroup.Create(hostcgroup.FS{Unified: root}, "/pod/sb")
	if err != nil {
		t.Fatal(err)
	}
	if enabled {
		if err := os.WriteFile(filepath.Join(root, "pod/sb/cgroup.controllers"), []byte("cpu memory pids"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, g
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
	root, g := podCgroup(t, true)
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

// growingVM grows to the size it is asked for, in blocks of 128 MiB above
// its 512 MiB base, and never shrinks.
type growingVM struct {
	staticVM
	memoryMiB uint32
}

func (v *growingVM) Resize(_ context.Context, vcpus, memoryMiB uint32) (hypervisor.Size, error) {
	v.memoryMiB = max(v.memoryMiB, 512+(max(memoryMiB, 512)-512+127)/128*128)
	return hypervisor.Size{VCPUs: vcpus, MemoryMiB: v.memoryMiB}, nil
}

// TestResizeSettlesCgroup checks that a grown VM's memory limit is that of
// a VM booted at the size reached, the block's slack gone.
func TestResizeSettlesCgroup(t *testing.T) {
	root, g := podCgroup(t, true)
	hc := &hostCgroup{cfg: CgroupConfig{Path: "/pod/sb", MemoryOverheadMiB: 256}, g: g}
	if err := hc.setLimits(1, 512); err != nil {
		t.Fatal(err)
	}
	s := &Sandbox{id: "sb", state: StateRunning, vm: &growingVM{memoryMiB: 512}, cgroup: hc, client: newFakeAgent().serve(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct{ ask, want uint32 }{{768, 768}, {800, 896}, {600, 896}} {
		if err := s.Resize(ctx, 1, tc.ask); err != nil {
			t.Fatalf("resize to %d: %v", tc.ask, err)
		}
		b, _ := os.ReadFile(filepath.Join(root, "pod/sb/memory.max"))
		if got, want := strings.TrimSpace(string(b)), strconv.FormatInt(int64(tc.want+256)<<20, 10); got != want {
			t.Errorf("after a resize to %d MiB: memory.max %s, want %s (a %d MiB VM and the overhead)", tc.ask, got, want, tc.want)
		}
	}
}

// TestCreateCgroupChoosesSystemd: the systemd form becomes a scope for
// systemd to make only on a cgroup v2 host under systemd (its limits held
// for the scope's start, none written by hand); elsewhere the sandbox
// uses the directory at the path and writes the limits.
func TestCreateCgroupChoosesSystemd(t *testing.T) {
	const path = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-sb.scope"
	unit := hostcgroup.Unit{Slice: "kubepods-pod1.slice", Name: "cri-containerd-sb.scope"}
	for _, tc := range []struct {
		name    string
		systemd bool
		unit    hostcgroup.Unit
		scope   bool
	}{
		{"systemd form under systemd", true, unit, true},
		{"systemd form without systemd", false, unit, false},
		{"cgroupfs form under systemd", true, hostcgroup.Unit{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The group's directory as the kernel would show it, its
			// controllers enabled.
			root := t.TempDir()
			leaf := filepath.Join(root, path)
			if err := os.MkdirAll(leaf, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{root, leaf} {
				if err := os.WriteFile(filepath.Join(d, "cgroup.controllers"), []byte("cpu memory pids"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			oldFS, oldSystemd := hostFS, systemdRunning
			hostFS = func() (hostcgroup.FS, error) { return hostcgroup.FS{Unified: root}, nil }
			systemdRunning = func() bool { return tc.systemd }
			defer func() { hostFS, systemdRunning = oldFS, oldSystemd }()
			s := &Sandbox{id: "sb"}
			var undo cleanups
			cfg := CgroupConfig{Path: path, Unit: tc.unit, MemoryOverheadMiB: 256}
			if err := s.createCgroup(context.Background(), cfg, 1, 512, &undo); err != nil {
				t.Fatal(err)
			}
			if got := s.cgroup.g.Unit(); (got.Name != "") != tc.scope || (tc.scope && got != unit) {
				t.Errorf("unit %+v, want a scope: %v", got, tc.scope)
			}
			_, err := os.Stat(filepath.Join(leaf, "memory.max"))
			if written := err == nil; written == tc.scope {
				t.Errorf("memory.max written by the sandbox: %v, want %v", written, !tc.scope)
			}
		})
	}
}

// TestStopKeepsRecordUntilCgroupGone: Stop removes the state directory,
// which holds the record Cleanup works from, only after the sandbox's
// cgroup: a cgroup that cannot be removed keeps the record, and a
// removable one goes first.
func TestStopKeepsRecordUntilCgroupGone(t *testing.T) {
	for _, tc := range []struct {
		name      string
		removable bool
	}{
		{"cgroup removed", true},
		{"cgroup not removable", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, g := podCgroup(t, false)
			if !tc.removable {
				// A file below makes rmdir fail, as a cgroup that still
				// holds a process does.
				if err := os.WriteFile(filepath.Join(root, "pod/sb/busy"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			dir := filepath.Join(t.TempDir(), "sb")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := writeRecord(dir, record{ID: "sb", Cgroup: "/pod/sb"}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			s := &Sandbox{id: "sb", state: StateRunning, vm: staticVM{}, stateDir: dir, bg: ctx, cancelBg: cancel,
				cgroup: &hostCgroup{cfg: CgroupConfig{Path: "/pod/sb"}, g: g}}
			err := s.Stop(context.Background())
			_, statErr := os.Stat(filepath.Join(dir, recordName))
			if tc.removable {
				if err != nil || statErr == nil {
					t.Errorf("stop: %v; record left: %v", err, statErr == nil)
				}
				return
			}
			if err == nil {
				t.Error("stop succeeded although the cgroup stayed")
			}
			if statErr != nil {
				t.Errorf("the record went before the cgroup: %v", statErr)
			}
		})
	}
}
