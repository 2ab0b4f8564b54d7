package sandbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/storage"
)

// addBlockRootfs hands a container's block-device root to the guest: it
// hot-adds the image file as a disk (addDisk) and returns the disk's ID and
// the storage the agent mounts as the container's root (it finds the disk
// by the serial). The undo it pushes unplugs the disk.
func (s *Sandbox) addBlockRootfs(ctx context.Context, id string, b *storage.BlockRootfs, undo *cleanups) (string, *agent.Storage, error) {
	hp, err := hypervisor.AsBlockHotplugger(s.vm)
	if err != nil {
		return "", nil, fmt.Errorf("block-device rootfs: %w", err)
	}
	disk, serial, err := s.addDisk(ctx, hp, id, b)
	if err != nil {
		return "", nil, err
	}
	undo.push(func(ctx context.Context) error { return s.removeBlockRootfs(ctx, []string{disk}) })
	return disk, &agent.Storage{
		BlockSerial: serial,
		Fstype:      b.FSType,
		Options:     b.Options,
		MountPoint:  storage.GuestBlockRootfs(id),
	}, nil
}

// addErofsRootfs hands a root from containerd's erofs snapshotter to the
// guest: every layer image as a read-only disk and the writable layer's
// image, if any, as a read-write one (addDisk each; the one undo it pushes
// unplugs all it added at once, the writable layer's first). It returns the disks' IDs and the storages the agent mounts
// in order: each disk, then the overlay over them at the container's root
// (a lone read-only layer is the root itself). A root that needs more disks
// than the VM has hotplug ports is refused before any is added.
func (s *Sandbox) addErofsRootfs(ctx context.Context, id string, e *storage.ErofsRootfs, undo *cleanups) ([]string, []*agent.Storage, error) {
	hp, err := hypervisor.AsBlockHotplugger(s.vm)
	if err != nil {
		return nil, nil, fmt.Errorf("erofs rootfs: %w", err)
	}
	images := e.Disks()
	if len(images) > int(s.hotplugBlocks) {
		return nil, nil, fmt.Errorf("erofs rootfs of %d layers needs %d disks, the vm has %d disk hotplug ports (hypervisor.qemu.hotplug_disks): %w",
			len(e.Layers), len(images), s.hotplugBlocks, errdefs.ErrResourceExhausted)
	}
	var (
		disks    []string
		storages []*agent.Storage
		lowers   []string
	)
	// One undo for all the disks: their unplugs go out together and the
	// guest gets one wait, not one per disk.
	undo.push(func(ctx context.Context) error { return s.removeBlockRootfs(ctx, disks) })
	for i, l := range e.Layers {
		disk, serial, err := s.addDisk(ctx, hp, id, l)
		if err != nil {
			return nil, nil, fmt.Errorf("erofs layer %d: %w", i, err)
		}
		mp := storage.GuestErofsLayer(id, i)
		if len(e.Layers) == 1 && e.Upper == nil {
			mp = storage.GuestBlockRootfs(id)
		}
		disks = append(disks, disk)
		storages = append(storages, &agent.Storage{BlockSerial: serial, Fstype: l.FSType, Options: l.Options, MountPoint: mp})
		lowers = append(lowers, mp)
	}
	if len(e.Layers) == 1 && e.Upper == nil {
		return disks, storages, nil
	}
	opts := []string{"lowerdir=" + strings.Join(lowers, ":")}
	if e.Upper != nil {
		disk, serial, err := s.addDisk(ctx, hp, id, e.Upper)
		if err != nil {
			return nil, nil, fmt.Errorf("erofs writable layer: %w", err)
		}
		mp := storage.GuestErofsUpper(id)
		disks = append(disks, disk)
		storages = append(storages, &agent.Storage{BlockSerial: serial, Fstype: e.Upper.FSType, Options: e.Upper.Options, MountPoint: mp})
		opts = append(opts, "upperdir="+mp+"/upper", "workdir="+mp+"/work")
	}
	storages = append(storages, &agent.Storage{
		Source:     "overlay",
		Fstype:     "overlay",
		Options:    append(opts, e.OverlayOptions...),
		MountPoint: storage.GuestBlockRootfs(id),
	})
	return disks, storages, nil
}

// addDisk opens the image file b (as root, from the path containerd's mount
// list gave) and hot-adds it to the VM as a virtio-blk disk with a serial
// the host chose, read-only when b is. It returns the disk's ID and serial;
// the caller's undo unplugs the disk.
func (s *Sandbox) addDisk(ctx context.Context, hp hypervisor.BlockHotplugger, id string, b *storage.BlockRootfs) (string, string, error) {
	f, err := b.Open()
	if err != nil {
		return "", "", err
	}
	// QEMU holds its own copy once the disk is added.
	defer func() { _ = f.Close() }()
	s.mu.Lock()
	s.diskSeq++
	disk := fmt.Sprintf("root%d", s.diskSeq)
	s.mu.Unlock()
	serial := "hull" + disk
	if err := hp.AddBlock(ctx, hypervisor.BlockDevice{ID: disk, File: f, ReadOnly: b.ReadOnly, Serial: serial}); err != nil {
		return "", "", fmt.Errorf("block-device rootfs %s: %w", b.Source, err)
	}
	log.G(ctx).WithFields(log.Fields{"container": id, "disk": disk, "image": b.Source, "fstype": b.FSType, "read_only": b.ReadOnly}).Debug("rootfs disk added")
	return disk, serial, nil
}

// removeDisksTimeout bounds the removal of a container's root disks: the
// driver's one wait for the guest (10 s) and QEMU's commands.
const removeDisksTimeout = 20 * time.Second

// removeBlockRootfs unplugs a container's root disks, all at once (the
// writable layer's first), once the guest has removed the container: at
// a delete, and in the undo of a failed create. It runs on a ctx of its
// own, bounded by removeDisksTimeout, whatever is left of ctx: a forced
// delete whose ctx has ended, or an undo whose time removeInGuest used,
// still removes the disks (the sandbox drops them from its records
// whatever the outcome). The driver bounds the wait for the guest, once
// for all the disks: one that keeps them does not hold up the delete
// beyond it; the hypervisor keeps a kept disk and its hold on the image
// until the guest lets it go, at the latest until the VM stops.
func (s *Sandbox) removeBlockRootfs(ctx context.Context, disks []string) error {
	if len(disks) == 0 {
		return nil
	}
	hp, err := hypervisor.AsBlockHotplugger(s.vm)
	if err != nil {
		return err
	}
	last := slices.Clone(disks)
	slices.Reverse(last)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeDisksTimeout)
	defer cancel()
	log.G(ctx).WithField("disks", last).Debug("unplugging rootfs disks")
	if err := hp.RemoveBlock(ctx, last...); err != nil {
		return fmt.Errorf("unplugging rootfs disks %v: %w", last, err)
	}
	return nil
}
