package sandbox

import (
	"context"
	"fmt"

	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/storage"
)

// addBlockRootfs hands a container's block-device root to the guest: it
// opens the image file (as root, from the path containerd's mount list
// gave), hot-adds it to the VM as a virtio-blk disk with a serial the host
// chose, and returns the disk's ID and the storage the agent mounts as the
// container's root (it finds the disk by the serial). The undo it pushes
// unplugs the disk.
func (s *Sandbox) addBlockRootfs(ctx context.Context, id string, b *storage.BlockRootfs, undo *cleanups) (string, *agent.Storage, error) {
	hp, err := hypervisor.AsBlockHotplugger(s.vm)
	if err != nil {
		return "", nil, fmt.Errorf("block-device rootfs: %w", err)
	}
	f, err := b.Open()
	if err != nil {
		return "", nil, err
	}
	// QEMU holds its own copy once the disk is added.
	defer func() { _ = f.Close() }()
	s.mu.Lock()
	s.diskSeq++
	disk := fmt.Sprintf("root%d", s.diskSeq)
	s.mu.Unlock()
	serial := "hull" + disk
	if err := hp.AddBlock(ctx, hypervisor.BlockDevice{ID: disk, File: f, ReadOnly: b.ReadOnly, Serial: serial}); err != nil {
		return "", nil, fmt.Errorf("block-device rootfs %s: %w", b.Source, err)
	}
	undo.push(func(ctx context.Context) error { return hp.RemoveBlock(ctx, disk) })
	log.G(ctx).WithFields(log.Fields{"container": id, "disk": disk, "image": b.Source, "read_only": b.ReadOnly}).Debug("rootfs disk added")
	return disk, &agent.Storage{
		BlockSerial: serial,
		Fstype:      b.FSType,
		Options:     b.Options,
		MountPoint:  storage.GuestBlockRootfs(id),
	}, nil
}

// removeBlockRootfs unplugs a container's root disk once the guest has
// removed the container. The driver bounds the wait for the guest: one
// that keeps the disk does not hold up the delete; the hypervisor keeps
// the disk and its hold on the image until the guest lets it go, at the
// latest until the VM stops.
func (s *Sandbox) removeBlockRootfs(ctx context.Context, disk string) error {
	hp, err := hypervisor.AsBlockHotplugger(s.vm)
	if err != nil {
		return err
	}
	if err := hp.RemoveBlock(ctx, disk); err != nil {
		return fmt.Errorf("unplugging rootfs disk %s: %w", disk, err)
	}
	return nil
}
