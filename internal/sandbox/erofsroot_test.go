package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/storage"
)

// diskVM records the disks hot-added and removed; the add numbered failAt
// (from 1) fails.
type diskVM struct {
	staticVM
	added []hypervisor.BlockDevice
	// removed holds the disks of each RemoveBlock call.
	removed [][]string
	// removeCtx is the state of each RemoveBlock call's ctx.
	removeCtx []ctxState
	failAt    int
}

// ctxState is a ctx's error and deadline when a call got it.
type ctxState struct {
	err      error
	deadline time.Time
	bounded  bool
}

func (v *diskVM) AddBlock(_ context.Context, b hypervisor.BlockDevice) error {
	if len(v.added)+1 == v.failAt {
		return errdefs.ErrResourceExhausted
	}
	v.added = append(v.added, hypervisor.BlockDevice{ID: b.ID, ReadOnly: b.ReadOnly, Serial: b.Serial})
	return nil
}

func (v *diskVM) RemoveBlock(ctx context.Context, ids ...string) error {
	v.removed = append(v.removed, ids)
	dl, ok := ctx.Deadline()
	v.removeCtx = append(v.removeCtx, ctxState{ctx.Err(), dl, ok})
	return nil
}

func TestAddErofsRootfs(t *testing.T) {
	dir := t.TempDir()
	img := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("image"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	layer := func(p string) *storage.BlockRootfs {
		return &storage.BlockRootfs{Source: p, FSType: "erofs", ReadOnly: true, Options: []string{"ro"}}
	}
	l0, l1, rw := img("l0"), img("l1"), img("rw")
	writable := &storage.ErofsRootfs{
		Layers:         []*storage.BlockRootfs{layer(l0), layer(l1)},
		Upper:          &storage.BlockRootfs{Source: rw, FSType: "ext4"},
		OverlayOptions: []string{"index=off"},
	}

	t.Run("writable root over two layers", func(t *testing.T) {
		vm := &diskVM{}
		s := &Sandbox{id: "sb", vm: vm, hotplugBlocks: 3}
		var undo cleanups
		disks, sts, err := s.addErofsRootfs(context.Background(), "c1", writable, &undo)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"root1", "root2", "root3"}; !reflect.DeepEqual(disks, want) {
			t.Errorf("disks %v, want %v", disks, want)
		}
		if want := []hypervisor.BlockDevice{{ID: "root1", ReadOnly: true, Serial: "hullroot1"}, {ID: "root2", ReadOnly: true, Serial: "hullroot2"}, {ID: "root3", Serial: "hullroot3"}}; !reflect.DeepEqual(vm.added, want) {
			t.Errorf("added %+v, want the layers read-only, the writable layer not", vm.added)
		}
		want := []*agent.Storage{
			{BlockSerial: "hullroot1", Fstype: "erofs", Options: []string{"ro"}, MountPoint: "/run/hull/erofs/c1/layer0"},
			{BlockSerial: "hullroot2", Fstype: "erofs", Options: []string{"ro"}, MountPoint: "/run/hull/erofs/c1/layer1"},
			{BlockSerial: "hullroot3", Fstype: "ext4", MountPoint: "/run/hull/erofs/c1/rw"},
			{Source: "overlay", Fstype: "overlay", MountPoint: "/run/hull/blockroot/c1/rootfs", Options: []string{
				"lowerdir=/run/hull/erofs/c1/layer0:/run/hull/erofs/c1/layer1",
				"upperdir=/run/hull/erofs/c1/rw/upper", "workdir=/run/hull/erofs/c1/rw/work", "index=off"}},
		}
		if !reflect.DeepEqual(sts, want) {
			t.Errorf("storages %v, want %v", sts, want)
		}
		if err := undo.run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if want := [][]string{{"root3", "root2", "root1"}}; !reflect.DeepEqual(vm.removed, want) {
			t.Errorf("undo removed %v, want %v", vm.removed, want)
		}
	})
	t.Run("a lone layer is the root", func(t *testing.T) {
		s := &Sandbox{id: "sb", vm: &diskVM{}, hotplugBlocks: 1}
		var undo cleanups
		_, sts, err := s.addErofsRootfs(context.Background(), "c1", &storage.ErofsRootfs{Layers: []*storage.BlockRootfs{layer(l0)}}, &undo)
		if err != nil {
			t.Fatal(err)
		}
		if len(sts) != 1 || sts[0].GetMountPoint() != storage.GuestBlockRootfs("c1") || sts[0].GetFstype() != "erofs" {
			t.Errorf("storages %v, want the layer at the root", sts)
		}
	})
	t.Run("more disks than ports: none added", func(t *testing.T) {
		vm := &diskVM{}
		s := &Sandbox{id: "sb", vm: vm, hotplugBlocks: 2}
		var undo cleanups
		if _, _, err := s.addErofsRootfs(context.Background(), "c1", writable, &undo); !errors.Is(err, errdefs.ErrResourceExhausted) {
			t.Errorf("got %v, want class %v", err, errdefs.ErrResourceExhausted)
		}
		if len(vm.added) != 0 {
			t.Errorf("added %v", vm.added)
		}
	})
	t.Run("a failed add leaves the earlier ones to the undo", func(t *testing.T) {
		vm := &diskVM{failAt: 3}
		s := &Sandbox{id: "sb", vm: vm, hotplugBlocks: 3}
		var undo cleanups
		if _, _, err := s.addErofsRootfs(context.Background(), "c1", writable, &undo); !errors.Is(err, errdefs.ErrResourceExhausted) {
			t.Fatalf("got %v, want the driver's error", err)
		}
		if err := undo.run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if want := [][]string{{"root2", "root1"}}; !reflect.DeepEqual(vm.removed, want) {
			t.Errorf("undo removed %v, want %v", vm.removed, want)
		}
	})
	t.Run("a missing image adds nothing more", func(t *testing.T) {
		vm := &diskVM{}
		s := &Sandbox{id: "sb", vm: vm, hotplugBlocks: 3}
		var undo cleanups
		e := &storage.ErofsRootfs{Layers: []*storage.BlockRootfs{layer(l0), layer(filepath.Join(dir, "gone"))}}
		if _, _, err := s.addErofsRootfs(context.Background(), "c1", e, &undo); err == nil {
			t.Fatal("a missing layer image added")
		}
		if len(vm.added) != 1 {
			t.Errorf("added %v, want only the first layer (for the undo)", vm.added)
		}
	})
	t.Run("a vm without block hotplug", func(t *testing.T) {
		s := &Sandbox{id: "sb", vm: staticVM{}, hotplugBlocks: 3}
		var undo cleanups
		if _, _, err := s.addErofsRootfs(context.Background(), "c1", writable, &undo); !errors.Is(err, errdefs.ErrNotImplemented) {
			t.Errorf("got %v, want class %v", err, errdefs.ErrNotImplemented)
		}
	})
}

// TestRemoveBlockRootfsOwnBound: the root disks are removed on a ctx of
// their own, bounded, whatever is left of the caller's: a forced delete
// whose ctx has ended, or a create's undo whose time the guest used,
// still unplugs them (the container's record of them goes either way).
func TestRemoveBlockRootfsOwnBound(t *testing.T) {
	vm := &diskVM{}
	s := &Sandbox{id: "sb", vm: vm, hotplugBlocks: 3}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	var undo cleanups
	if _, _, err := s.addErofsRootfs(context.Background(), "c1", &storage.ErofsRootfs{
		Layers: []*storage.BlockRootfs{{Source: writeFile(t, "l0"), FSType: "erofs", ReadOnly: true}},
	}, &undo); err != nil {
		t.Fatal(err)
	}
	if err := s.removeBlockRootfs(ended, []string{"root1", "root2"}); err != nil {
		t.Fatal(err)
	}
	if err := undo.run(ended); err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"root2", "root1"}, {"root1"}}; !reflect.DeepEqual(vm.removed, want) {
		t.Fatalf("removed %v, want %v", vm.removed, want)
	}
	for i, c := range vm.removeCtx {
		if c.err != nil || !c.bounded || time.Until(c.deadline) > removeDisksTimeout {
			t.Errorf("RemoveBlock %d got a ctx ended (%v) or unbounded (deadline %v, %v), want one of its own within %s", i, c.err, c.deadline, c.bounded, removeDisksTimeout)
		}
	}
}

func writeFile(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("image"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
