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
	// release a device (DEVICE_DELETED) before the caller goes on
	// without it; its port waits for QEMU to show it gone.
	defaultUnplugWait = 10 * time.Second
)

// blockIDPattern is what a hot-added disk's ID may be: QEMU node names and
// device IDs start with a letter and hold at most 31 bytes; "blk-" and
// "blkdev-" are added to it.
var blockIDPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,23}$`)

// blockPortID names the root port number i reserved for a hot-added disk.
func blockPortID(i uint32) string { return fmt.Sprintf("blkport%d", i) }

// blockDevPrefix begins the QEMU device ID of a hot-added disk.
const blockDevPrefix = "blkdev-"

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
	if slices.ContainsFunc(v.cfg.Blocks, func(d hypervisor.BlockDevice) bool { return d.ID == b.ID }) {
		return fmt.Errorf("vm %s: a disk named %q is already there: %w", v.cfg.ID, b.ID, errdefs.ErrAlreadyExists)
	}
	if err := v.hotAdd(ctx, q, &v.blkPorts, b.ID, blockDevPrefix+b.ID, func(ctx context.Context, port string) (releaseFunc, error) {
		return v.plugBlock(ctx, q, b, port)
	}); err != nil {
		return fmt.Errorf("vm %s: adding disk %q: %w", v.cfg.ID, b.ID, err)
	}
	log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "disk": b.ID, "port": v.blkPorts.portID(uint32(v.blkPorts.find(b.ID))), "read_only": b.ReadOnly}).Info("disk hot-added")
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

// plugBlock runs the QMP steps of AddBlock, undoing the done steps when a
// later one fails, and returns what releases the disk's node and fd set
// once its device is gone; the caller holds blkMu.
func (v *VM) plugBlock(ctx context.Context, q *qmpConn, b hypervisor.BlockDevice, port string) (rel releaseFunc, retErr error) {
	// lost tells that device_add's answer was lost, gone that the
	// rollback then saw the device unplugged; release is set once there
	// is something to release.
	var (
		lost, gone bool
		release    releaseFunc
	)
	defer func() {
		// After the rollback: a device it could not show gone may
		// still hold what release drops.
		if retErr != nil && lost && !gone {
			rel = release
		}
	}()
	var undo qmpUndo
	defer func() { undo.run(ctx, &retErr) }()

	// The driver numbers the set itself, and the undo is pushed before
	// add-fd: a reply lost to a timeout may hide a set QEMU made, which
	// remove-fd then still finds (one that QEMU never made is not an
	// error there).
	v.fdsetSeq++
	set := v.fdsetSeq
	undo.push(func(ctx context.Context) error { return removeFDSet(ctx, q, set) })
	if _, err := q.executeFD(ctx, "add-fd", map[string]any{"fdset-id": set}, int(b.File.Fd())); err != nil {
		return nil, err
	}

	node := "blk-" + b.ID
	file := map[string]any{"driver": "file", "filename": fmt.Sprintf("/dev/fdset/%d", set), "read-only": b.ReadOnly}
	// The undo is pushed before blockdev-add too: a reply lost to a
	// timeout may hide a node QEMU made, which holds a copy of the
	// image's descriptor (a node that is not there is no error).
	nodeMade := false
	undo.push(func(ctx context.Context) error {
		if !nodeMade {
			return nil
		}
		return deleteNode(ctx, q, node)
	})
	if _, err := q.execute(ctx, "blockdev-add", map[string]any{
		"driver": "raw", "node-name": node, "read-only": b.ReadOnly, "file": file,
	}); err != nil {
		nodeMade = lostAnswer(err)
		return nil, err
	}
	nodeMade = true
	release = func(ctx context.Context, q *qmpConn) error {
		var errs []error
		if err := deleteNode(ctx, q, node); err != nil {
			errs = append(errs, err)
		}
		if err := removeFDSet(ctx, q, set); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}

	devID := blockDevPrefix + b.ID
	dev := map[string]any{"driver": "virtio-blk-pci", "id": devID, "drive": node, "bus": port}
	if b.Serial != "" {
		dev["serial"] = b.Serial
	}
	// A device_add whose answer is lost may have plugged the device: it
	// is unplugged before the node goes (QEMU refuses to delete a node a
	// device uses). When the guest does not let it go, the port waits
	// for it (hotAdd) with the release.
	undo.push(func(ctx context.Context) error {
		if !lost {
			return nil
		}
		err := v.unplugDevice(ctx, q, devID)
		gone = err == nil
		return err
	})
	if _, err := q.execute(ctx, "device_add", dev); err != nil {
		lost = lostAnswer(err)
		return nil, err
	}
	return release, nil
}

// lostAnswer tells whether err is the caller giving up on a command's
// answer, after which QEMU may still have run the command.
func lostAnswer(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// deleteNode deletes a block node; one QEMU does not have (any more) is
// not an error.
func deleteNode(ctx context.Context, q *qmpConn, node string) error {
	_, err := q.execute(ctx, "blockdev-del", map[string]any{"node-name": node})
	if err == nil {
		return nil
	}
	// QEMU answers a missing node with a generic error: ask it.
	r, qerr := q.execute(ctx, "query-named-block-nodes", map[string]any{"flat": true})
	if qerr != nil {
		return errors.Join(err, qerr)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if qerr := json.Unmarshal(r, &nodes); qerr != nil {
		return errors.Join(err, fmt.Errorf("qmp query-named-block-nodes: %w", qerr))
	}
	for _, n := range nodes {
		if n.NodeName == node {
			return err
		}
	}
	return nil
}

// removeFDSet closes QEMU's copies of the descriptors in an fd set; a set
// that is already gone is not an error.
func removeFDSet(ctx context.Context, q *qmpConn, fdset int64) error {
	if _, err := q.execute(ctx, "remove-fd", map[string]any{"fdset-id": fdset}); err != nil && !errdefs.IsUnknown(err) {
		return err
	}
	return nil
}

// RemoveBlock unplugs disks AddBlock added, all at once (the disks of
// one container's root): a device_del each, then one wait, bounded once
// by the unplug wait (10 s) or ctx, for QEMU's DEVICE_DELETED events,
// which come once the guest has released each device; then, for each
// disk gone, blockdev-del and remove-fd drop QEMU's node and its
// descriptor of the image, and its port is free again. A guest that does
// not release a disk does not hold up the caller: RemoveBlock logs it and
// goes on, and the port stays taken until QEMU shows the device gone: a
// late DEVICE_DELETED, or its absence from QEMU's device tree when a later
// AddBlock needs a port. Then the node and the descriptor are dropped and
// the port is offered again. At the latest they go with the VM. The
// errors of the disks (an unknown one is ErrNotFound) are joined; the
// other disks are removed all the same.
func (v *VM) RemoveBlock(ctx context.Context, ids ...string) error {
	v.blkMu.Lock()
	defer v.blkMu.Unlock()
	var (
		errs []error
		todo []string
	)
	for _, id := range ids {
		i := v.blkPorts.find(id)
		// An unsure port holds a disk whose add failed; an unplugging
		// one a disk removed already, which the guest keeps.
		if i < 0 || v.blkPorts.slots[i].state == slotUnsure || v.blkPorts.slots[i].state == slotUnplugging || slices.Contains(todo, id) {
			errs = append(errs, fmt.Errorf("vm %s: disk %q: %w", v.cfg.ID, id, errdefs.ErrNotFound))
			continue
		}
		todo = append(todo, id)
	}
	if len(todo) == 0 {
		return errors.Join(errs...)
	}
	q, err := v.hotplugQMP("removing disks")
	if err != nil {
		if !hypervisor.IsExited(err) {
			return errors.Join(append(errs, err)...)
		}
		// The devices went with the VM.
		for _, id := range todo {
			v.blkPorts.slots[v.blkPorts.find(id)] = hotSlot{}
		}
		return errors.Join(errs...)
	}
	for k, err := range v.hotRemoveAll(ctx, q, &v.blkPorts, todo) {
		id := todo[k]
		logger := log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "disk": id})
		switch {
		case hypervisor.IsExited(err):
			// The device went with the VM.
			if i := v.blkPorts.find(id); i >= 0 {
				v.blkPorts.slots[i] = hotSlot{}
			}
		case errors.Is(err, errNotReleased):
			logger.WithError(err).Warn("the guest keeps the disk: its port and image stay with qemu until the guest lets it go or the vm stops")
		case err != nil:
			errs = append(errs, fmt.Errorf("vm %s: removing disk %q: %w", v.cfg.ID, id, err))
		default:
			logger.Info("disk removed")
		}
	}
	return errors.Join(errs...)
}

// errNotReleased is unplugDevice's error when the guest has not released
// the device within the bound (or before ctx was done).
var errNotReleased = errors.New("the guest did not release the device")

// unplugDevice unplugs devID: unplugDevices of that one.
func (v *VM) unplugDevice(ctx context.Context, q *qmpConn, devID string) error {
	return v.unplugDevices(ctx, q, []string{devID})[0]
}

// unplugDevices asks QEMU to unplug every device of devs (a device_del
// each, all sent before any wait), then waits for their DEVICE_DELETED
// events, which come once the guest has released each device, with one
// deadline for all: at most unplugWait from the last device_del's answer,
// or until ctx is done (errNotReleased for each device not yet deleted),
// or until the monitor connection ends (QEMU exited or is stopping: the
// connection's error). A device QEMU does not know is gone already. A
// device_del whose answer was lost (ctx ended after it went out) counts
// as an unplug the guest has not answered yet (errNotReleased): QEMU may
// have run it. Once ctx is done, no device_del goes out (a ctx canceled
// without a deadline would not stop the write): each device not asked
// yet gets ctx's error, as one whose device_del was not sent, and stays
// plugged. A device whose wait ends without the event is marked so that
// its event, when it comes late, frees its port (deviceDeleted,
// releaseLate). The errors are one per device, in order; nil where the
// device is gone.
func (v *VM) unplugDevices(ctx context.Context, q *qmpConn, devs []string) []error {
	errs := make([]error, len(devs))
	deleted := make([]<-chan struct{}, len(devs))
	for i, dev := range devs {
		if err := ctx.Err(); err != nil {
			// Not sent: the device stays plugged in its port.
			errs[i] = fmt.Errorf("device %s: device_del not sent: %w", dev, err)
			continue
		}
		deleted[i] = v.watchDeleted(dev)
		_, err := q.execute(ctx, "device_del", map[string]any{"id": dev})
		switch {
		case err == nil:
			continue
		case lostAnswer(err):
			// The command went out and QEMU may run it: the device
			// is treated as one the guest has not released yet, so
			// that QEMU's word frees its port (its late event, or
			// its absence from QEMU's tree).
			if !v.unwatchDeleted(dev, true) {
				errs[i] = fmt.Errorf("device %s: device_del's answer lost, %w yet: %w", dev, errNotReleased, err)
			}
		default:
			v.unwatchDeleted(dev, false)
			if !errdefs.IsNotFound(err) {
				errs[i] = err
			}
		}
		deleted[i] = nil
	}
	wait := time.NewTimer(v.unplugWait)
	defer wait.Stop()
	var end error
	for i, dev := range devs {
		if deleted[i] == nil {
			continue
		}
		if end == nil {
			select {
			case <-deleted[i]:
				v.unwatchDeleted(dev, false)
				continue
			case <-wait.C:
				end = fmt.Errorf("%w within %s", errNotReleased, v.unplugWait)
			case <-ctx.Done():
				end = fmt.Errorf("%w: %w", errNotReleased, ctx.Err())
			case <-q.closed:
				// No event comes any more: QEMU exited, or is being
				// stopped.
				end = fmt.Errorf("waiting for its release: %w", q.closedErr())
			}
		}
		if errors.Is(end, errNotReleased) {
			if !v.unwatchDeleted(dev, true) {
				errs[i] = fmt.Errorf("device %s: %w", dev, end)
			}
			// Else the event came as the wait ended.
			continue
		}
		if !v.unwatchDeleted(dev, false) {
			errs[i] = fmt.Errorf("device %s: %w", dev, end)
		}
	}
	return errs
}

// watchDeleted returns a channel closed when QEMU reports that the device
// id is deleted.
func (v *VM) watchDeleted(id string) <-chan struct{} {
	ch := make(chan struct{})
	v.mu.Lock()
	v.deleted[id] = ch
	delete(v.unplugging, id)
	v.mu.Unlock()
	return ch
}

// unwatchDeleted ends a wait of watchDeleted and reports whether the
// device was deleted meanwhile; with late, a device not yet deleted is
// marked so that its DEVICE_DELETED frees its port when it comes.
func (v *VM) unwatchDeleted(id string, late bool) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.deleted[id]
	delete(v.deleted, id)
	if !ok {
		// deviceDeleted closed the channel and dropped the wait.
		return true
	}
	if late {
		v.unplugging[id] = &lateUnplug{}
	}
	return false
}

// deviceDeleted handles a DEVICE_DELETED event: it wakes the wait for that
// device, if any, or, for a device whose unplug stopped waiting, frees its
// port in a goroutine of its own (releaseLate), started once per unplug
// that stopped waiting (its mark stays, deleted, until the port is
// freed). Events for other devices (and the unnamed inner devices QEMU
// reports by path alone) are ignored.
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
		return
	}
	if u := v.unplugging[d.Device]; u != nil && !u.deleted {
		u.deleted = true
		v.late.Add(1)
		go v.releaseLate(d.Device, u)
	}
}
