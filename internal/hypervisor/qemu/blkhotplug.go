package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

const (
	// maxHotplugBlocks bounds the root ports reserved for hot-added disks
	// (a slot of pcie.0 each, no I/O ports).
	maxHotplugBlocks = 16
	// defaultUnplugWait bounds how long RemoveBlock waits for the guest to
	// release a disk (DEVICE_DELETED) before it forgets it.
	defaultUnplugWait = 10 * time.Second
)

// blockIDPattern is what a hot-added disk's ID may be: QEMU node names and
// device IDs start with a letter and hold at most 31 bytes; "blk-" and
// "blkdev-" are added to it.
var blockIDPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,23}$`)

// blockPortID names the root port number i reserved for a hot-added disk.
func blockPortID(i uint32) string { return fmt.Sprintf("blkport%d", i) }

// hotBlock is a disk AddBlock plugged.
type hotBlock struct {
	port  int
	fdset int64
}

// AddBlock hot-adds a virtio-blk-pci disk on a q35 machine: it passes
// b.File to QEMU over the monitor socket into an fd set of its own
// (add-fd, one SCM_RIGHTS message), opens it as a raw block node through
// /dev/fdset/N (blockdev-add, read-only when b.ReadOnly: QEMU then offers
// the guest a read-only disk) and plugs the device, with b.Serial, into a
// free root port of those the argv reserved (Config.HotplugBlocks). QEMU
// opens no path of its own: the descriptor is the one the host opened.
// When a step fails, the steps before it are undone, so nothing is left
// half added.
//
// On microvm it returns an ErrNotImplemented-class error.
func (v *VM) AddBlock(ctx context.Context, b hypervisor.BlockDevice) error {
	if v.layout.machine == MachineMicroVM {
		return fmt.Errorf("vm %s: the %s machine cannot hot-add devices: %w", v.cfg.ID, MachineMicroVM, errdefs.ErrNotImplemented)
	}
	if err := validateHotBlock(b); err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	v.blkMu.Lock()
	defer v.blkMu.Unlock()
	q, err := v.hotplugQMP("adding disk " + b.ID)
	if err != nil {
		return err
	}
	// A disk whose add lost its answer or whose guest kept it ("?"+ID)
	// may still be plugged under that ID.
	if _, ok := v.blkDevs[b.ID]; ok || slices.Contains(v.blkPorts, "?"+b.ID) ||
		slices.ContainsFunc(v.cfg.Blocks, func(d hypervisor.BlockDevice) bool { return d.ID == b.ID }) {
		return fmt.Errorf("vm %s: a disk named %q is already there: %w", v.cfg.ID, b.ID, errdefs.ErrAlreadyExists)
	}
	port := slices.Index(v.blkPorts, "")
	if port < 0 {
		return fmt.Errorf("vm %s: adding disk %q: all %d disk hotplug slots are in use: %w",
			v.cfg.ID, b.ID, len(v.blkPorts), errdefs.ErrResourceExhausted)
	}
	fdset, err := v.plugBlock(ctx, q, b, blockPortID(uint32(port)))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			// QEMU may have plugged the device before the answer was
			// lost: the port is not offered again.
			v.blkPorts[port] = "?" + b.ID
		}
		return fmt.Errorf("vm %s: adding disk %q: %w", v.cfg.ID, b.ID, err)
	}
	v.blkPorts[port] = b.ID
	v.blkDevs[b.ID] = hotBlock{port: port, fdset: fdset}
	log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "disk": b.ID, "port": blockPortID(uint32(port)), "read_only": b.ReadOnly}).Info("disk hot-added")
	return nil
}

// validateHotBlock checks a disk to hot-add.
func validateHotBlock(b hypervisor.BlockDevice) error {
	inval := func(format string, args ...any) error {
		return fmt.Errorf("disk %q: "+format+": %w", append([]any{b.ID}, append(args, errdefs.ErrInvalidArgument)...)...)
	}
	switch {
	case !blockIDPattern.MatchString(b.ID):
		return inval("want an id of a letter then at most 23 letters, digits, '_' or '-'")
	case b.File == nil:
		return inval("a hot-added disk needs an open file")
	case b.Serial != "" && !hypervisor.ValidDiskSerial(b.Serial):
		return inval("serial %q: want 1 to 20 letters, digits, '_' or '-'", b.Serial)
	case b.Format != "" && b.Format != "raw":
		return inval("format %q: a hot-added disk is raw", b.Format)
	}
	return nil
}

// hotplugQMP returns the monitor of a running (or paused) VM.
func (v *VM) hotplugQMP(what string) (*qmpConn, error) {
	v.mu.Lock()
	st, q := v.state, v.qmp
	v.mu.Unlock()
	switch st {
	case stateRunning, statePaused:
		return q, nil
	case stateExited, stateStopped:
		return nil, fmt.Errorf("vm %s: %s: %w", v.cfg.ID, what, hypervisor.ErrVMExited)
	default:
		return nil, fmt.Errorf("vm %s is %s, not running: %w", v.cfg.ID, st, errdefs.ErrFailedPrecondition)
	}
}

// plugBlock runs the QMP steps of AddBlock and returns the fd set that
// holds the disk's descriptor, undoing the done steps when a later one
// fails; the caller holds blkMu.
func (v *VM) plugBlock(ctx context.Context, q *qmpConn, b hypervisor.BlockDevice, port string) (_ int64, retErr error) {
	var undo []func(context.Context) error
	defer func() {
		if retErr == nil {
			return
		}
		// The caller's ctx may be what failed: undo with a fresh one.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](rctx); err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("undoing a step: %w", err))
			}
		}
	}()

	// The driver numbers the set itself, and the undo is pushed before
	// add-fd: a reply lost to a timeout may hide a set QEMU made, which
	// remove-fd then still finds (one that QEMU never made is not an
	// error there).
	v.fdsetSeq++
	set := v.fdsetSeq
	undo = append(undo, func(ctx context.Context) error { return removeFDSet(ctx, q, set) })
	if _, err := q.executeFD(ctx, "add-fd", map[string]any{"fdset-id": set}, int(b.File.Fd())); err != nil {
		return 0, err
	}

	node := "blk-" + b.ID
	file := map[string]any{"driver": "file", "filename": fmt.Sprintf("/dev/fdset/%d", set), "read-only": b.ReadOnly}
	if _, err := q.execute(ctx, "blockdev-add", map[string]any{
		"driver": "raw", "node-name": node, "read-only": b.ReadOnly, "file": file,
	}); err != nil {
		return 0, err
	}
	undo = append(undo, func(ctx context.Context) error {
		_, err := q.execute(ctx, "blockdev-del", map[string]any{"node-name": node})
		return err
	})

	devID := "blkdev-" + b.ID
	dev := map[string]any{"driver": "virtio-blk-pci", "id": devID, "drive": node, "bus": port}
	if b.Serial != "" {
		dev["serial"] = b.Serial
	}
	// A device_add whose answer is lost may have plugged the device: it
	// is unplugged before the node goes (QEMU refuses to delete a node a
	// device uses).
	lost := false
	undo = append(undo, func(ctx context.Context) error {
		if !lost {
			return nil
		}
		return v.unplugDevice(ctx, q, devID)
	})
	if _, err := q.execute(ctx, "device_add", dev); err != nil {
		lost = errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
		return 0, err
	}
	return set, nil
}

// removeFDSet closes QEMU's copies of the descriptors in an fd set; a set
// that is already gone is not an error.
func removeFDSet(ctx context.Context, q *qmpConn, fdset int64) error {
	if _, err := q.execute(ctx, "remove-fd", map[string]any{"fdset-id": fdset}); err != nil && !errdefs.IsUnknown(err) {
		return err
	}
	return nil
}

// RemoveBlock unplugs a disk AddBlock added: device_del, then it waits for
// QEMU's DEVICE_DELETED, which comes once the guest has released the
// device, for at most the unplug bound (10 s) or until ctx is done; then
// blockdev-del and remove-fd drop QEMU's node and its descriptor, and the
// port is free again. A guest that does not release the device does not
// hold up the caller: the disk is forgotten (logged), its port stays taken
// and the device and its descriptor go with the VM.
func (v *VM) RemoveBlock(ctx context.Context, id string) error {
	v.blkMu.Lock()
	defer v.blkMu.Unlock()
	d, ok := v.blkDevs[id]
	if !ok {
		return fmt.Errorf("vm %s: disk %q: %w", v.cfg.ID, id, errdefs.ErrNotFound)
	}
	logger := log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "disk": id})
	q, err := v.hotplugQMP("removing disk " + id)
	if err != nil {
		delete(v.blkDevs, id)
		if hypervisor.IsExited(err) {
			// The device went with the VM.
			return nil
		}
		return err
	}
	devID := "blkdev-" + id
	err = v.unplugDevice(ctx, q, devID)
	switch {
	case hypervisor.IsExited(err):
		// The device went with the VM.
		delete(v.blkDevs, id)
		return nil
	case errors.Is(err, errNotReleased):
		v.forgetBlock(id, d)
		logger.WithError(err).Warn("the disk stays plugged until the vm stops")
		return nil
	case err != nil:
		return fmt.Errorf("vm %s: removing disk %q: %w", v.cfg.ID, id, err)
	}
	var errs []error
	if _, err := q.execute(ctx, "blockdev-del", map[string]any{"node-name": "blk-" + id}); err != nil {
		errs = append(errs, err)
	}
	if err := removeFDSet(ctx, q, d.fdset); err != nil {
		errs = append(errs, err)
	}
	delete(v.blkDevs, id)
	if len(errs) > 0 {
		// The port stays taken: the node may still be there.
		v.blkPorts[d.port] = "?" + id
		return fmt.Errorf("vm %s: removing disk %q: %w", v.cfg.ID, id, errors.Join(errs...))
	}
	v.blkPorts[d.port] = ""
	logger.Info("disk removed")
	return nil
}

// errNotReleased is unplugDevice's error when the guest has not released
// the device within the bound (or before ctx was done).
var errNotReleased = errors.New("the guest did not release the device")

// unplugDevice asks QEMU to unplug devID (device_del) and waits for its
// DEVICE_DELETED, which comes once the guest has released the device, for
// at most unplugWait or until ctx is done (errNotReleased). A device QEMU
// does not know is gone already.
func (v *VM) unplugDevice(ctx context.Context, q *qmpConn, devID string) error {
	deleted := v.watchDeleted(devID)
	defer v.unwatchDeleted(devID)
	if _, err := q.execute(ctx, "device_del", map[string]any{"id": devID}); err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	wait := time.NewTimer(v.unplugWait)
	defer wait.Stop()
	select {
	case <-deleted:
		return nil
	case <-wait.C:
		return fmt.Errorf("device %s: %w within %s", devID, errNotReleased, v.unplugWait)
	case <-ctx.Done():
		return fmt.Errorf("device %s: %w: %w", devID, errNotReleased, ctx.Err())
	}
}

// forgetBlock drops a disk the guest did not release; its port is not
// offered again. The caller holds blkMu.
func (v *VM) forgetBlock(id string, d hotBlock) {
	delete(v.blkDevs, id)
	v.blkPorts[d.port] = "?" + id
}

// watchDeleted returns a channel closed when QEMU reports that the device
// id is deleted.
func (v *VM) watchDeleted(id string) <-chan struct{} {
	ch := make(chan struct{})
	v.mu.Lock()
	v.deleted[id] = ch
	v.mu.Unlock()
	return ch
}

func (v *VM) unwatchDeleted(id string) {
	v.mu.Lock()
	delete(v.deleted, id)
	v.mu.Unlock()
}

// deviceDeleted handles a DEVICE_DELETED event: it wakes RemoveBlock's
// wait for that device, if any. Events for other devices (and the
// unnamed inner devices QEMU reports by path alone) are ignored.
func (v *VM) deviceDeleted(data json.RawMessage) {
	var d struct {
		Device string `json:"device"`
	}
	if json.Unmarshal(data, &d) != nil || d.Device == "" {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if ch, ok := v.deleted[d.Device]; ok {
		close(ch)
		delete(v.deleted, d.Device)
	}
}
