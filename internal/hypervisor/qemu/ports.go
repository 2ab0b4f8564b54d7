package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// slotState is where a root port reserved for hot-added devices is:
//
//	free -> used               (the device_add answered)
//	free -> unsure             (the device_add's answer was lost)
//	used -> unplugging         (the guest did not release it in time, or
//	                            it did and the release failed)
//	used|unsure|unplugging -> free  (QEMU no longer has the device, and
//	                                  what it used is released)
//
// A port is offered again only once QEMU has shown that the device is gone:
// its DEVICE_DELETED event, or its absence from QEMU's device tree.
type slotState int

const (
	slotFree slotState = iota
	slotUsed
	slotUnsure
	slotUnplugging
)

func (s slotState) String() string {
	return [...]string{"free", "used", "unsure", "unplugging"}[s]
}

// releaseFunc drops what a hot-added device used in QEMU (a disk's node
// and fd set, a NIC's netdev) once the device itself is gone. It treats
// what is already gone as done.
type releaseFunc func(ctx context.Context, q *qmpConn) error

// hotSlot is one root port reserved for hot-added devices.
type hotSlot struct {
	state slotState
	// id is the caller's ID of the device in the port, dev its QEMU
	// device ID; empty while free.
	id, dev string
	// release drops what the device used once it is gone; nil for
	// nothing.
	release releaseFunc
}

// hotPorts are the root ports the argv reserved for one kind of hot-added
// device. Each kind's mutex (nicMu, blkMu) guards its table.
type hotPorts struct {
	// kind names the devices in errors ("NIC", "disk").
	kind string
	// portID names root port i in the argv.
	portID func(uint32) string
	slots  []hotSlot
}

func newHotPorts(kind string, portID func(uint32) string, n uint32) hotPorts {
	return hotPorts{kind: kind, portID: portID, slots: make([]hotSlot, n)}
}

// find returns the port that holds (or may hold) the device id, or -1.
func (p *hotPorts) find(id string) int {
	return slices.IndexFunc(p.slots, func(s hotSlot) bool { return s.state != slotFree && s.id == id })
}

// findDev returns the port that holds (or may hold) the QEMU device dev,
// or -1.
func (p *hotPorts) findDev(dev string) int {
	return slices.IndexFunc(p.slots, func(s hotSlot) bool { return s.state != slotFree && s.dev == dev })
}

// free counts the free ports.
func (p *hotPorts) free() int {
	n := 0
	for _, s := range p.slots {
		if s.state == slotFree {
			n++
		}
	}
	return n
}

// pending tells whether a port waits for QEMU to show its device gone.
func (p *hotPorts) pending() bool {
	return slices.ContainsFunc(p.slots, func(s hotSlot) bool { return s.state == slotUnsure || s.state == slotUnplugging })
}

// settle frees the ports whose device QEMU no longer has (a late
// DEVICE_DELETED the driver missed, a lost device_add that QEMU never
// did): it lists QEMU's devices once and releases what each gone device
// used. A port whose device is still there, or whose release failed,
// stays taken. The caller holds the table's mutex.
func (v *VM) settle(ctx context.Context, q *qmpConn, p *hotPorts) error {
	if !p.pending() {
		return nil
	}
	devs, err := peripherals(ctx, q)
	if err != nil {
		return fmt.Errorf("listing qemu's devices: %w", err)
	}
	var errs []error
	for i := range p.slots {
		s := &p.slots[i]
		if (s.state != slotUnsure && s.state != slotUnplugging) || devs[s.dev] {
			continue
		}
		if err := v.releaseSlot(ctx, q, p, i); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// releaseSlot runs the release of port i, whose device is gone, and frees
// the port; when the release fails, the port stays as it was. The caller
// holds the table's mutex.
func (v *VM) releaseSlot(ctx context.Context, q *qmpConn, p *hotPorts, i int) error {
	s := &p.slots[i]
	if s.release != nil {
		if err := s.release(ctx, q); err != nil {
			return fmt.Errorf("releasing %s %q: %w", p.kind, s.id, err)
		}
	}
	v.unmarkUnplugging(s.dev)
	log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "device": s.dev, "port": p.portID(uint32(i)), "was": s.state}).Info("hotplug port free again")
	*s = hotSlot{}
	return nil
}

// peripherals returns the IDs of QEMU's named devices: the children of
// /machine/peripheral. The list is bounded by the devices the host
// created; the guest adds none.
func peripherals(ctx context.Context, q *qmpConn) (map[string]bool, error) {
	r, err := q.execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"})
	if err != nil {
		return nil, err
	}
	var props []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(r, &props); err != nil {
		return nil, fmt.Errorf("qmp qom-list: %w", err)
	}
	devs := make(map[string]bool, len(props))
	for _, p := range props {
		if strings.HasPrefix(p.Type, "child<") {
			devs[p.Name] = true
		}
	}
	return devs, nil
}

// plugFunc runs the QMP steps that plug one device into port, undoing its
// own steps when one fails. It returns what releases the device's
// resources once the device is gone: on success, and on a failure after
// which the device may still be plugged (a device_add whose answer was
// lost, and whose unplug the rollback could not see through); nil on a
// failure that left nothing.
type plugFunc func(ctx context.Context, port string) (releaseFunc, error)

// hotAdd plugs the device id (QEMU device dev) into a free port of p: it
// refuses an id that is in a port already, frees the ports whose device
// QEMU has let go, then runs plug. A device_add whose answer was lost
// leaves its port unsure: it is offered again only once QEMU shows the
// device gone. The caller holds the table's mutex.
func (v *VM) hotAdd(ctx context.Context, q *qmpConn, p *hotPorts, id, dev string, plug plugFunc) error {
	if p.find(id) >= 0 {
		return fmt.Errorf("a %s named %q is already there: %w", p.kind, id, errdefs.ErrAlreadyExists)
	}
	if p.free() == 0 {
		if err := v.settle(ctx, q, p); err != nil {
			log.G(ctx).WithError(err).WithField("vm", v.cfg.ID).Warn("hotplug ports not settled")
		}
	}
	port := slices.IndexFunc(p.slots, func(s hotSlot) bool { return s.state == slotFree })
	if port < 0 {
		return fmt.Errorf("all %d %s hotplug slots are in use: %w", len(p.slots), p.kind, errdefs.ErrResourceExhausted)
	}
	release, err := plug(ctx, p.portID(uint32(port)))
	if err != nil {
		if release != nil {
			// QEMU may have plugged the device before the answer was
			// lost, and the rollback could not show it gone: the port
			// waits for QEMU to.
			p.slots[port] = hotSlot{state: slotUnsure, id: id, dev: dev, release: release}
		}
		return err
	}
	p.slots[port] = hotSlot{state: slotUsed, id: id, dev: dev, release: release}
	return nil
}

// hotRemove unplugs the device in the port that holds id: hotRemoveAll
// of that one.
func (v *VM) hotRemove(ctx context.Context, q *qmpConn, p *hotPorts, id string) error {
	return v.hotRemoveAll(ctx, q, p, []string{id})[0]
}

// hotRemoveAll unplugs the devices in the ports that hold ids, all at
// once: every device_del goes out first, then one wait, bounded once by
// the unplug wait (or ctx), takes QEMU's DEVICE_DELETED events of all of
// them (unplugDevices). Each device QEMU reports deleted has what it used
// released and its port freed. A device the guest does not release within
// the bound, or whose device_del's answer was lost (QEMU may have run
// it), leaves its port unplugging, with errNotReleased for its id: the
// port is freed when QEMU's DEVICE_DELETED comes late (deviceDeleted), or
// when a later hot-add finds the device gone (settle); at the latest the
// device and all it holds go with the VM. The releases run after the wait
// on a fresh ctx bounded by rollbackTimeout (the wait may have used up
// ctx); a gone device whose release fails leaves its port unplugging too,
// for settle to release again. The errors are one per id, in
// order; nil where the device is gone. The caller holds the table's
// mutex.
func (v *VM) hotRemoveAll(ctx context.Context, q *qmpConn, p *hotPorts, ids []string) []error {
	errs := make([]error, len(ids))
	var (
		devs  []string
		ports []int
		of    []int
	)
	for k, id := range ids {
		i := p.find(id)
		switch {
		case i < 0 || slices.Contains(ports, i):
			errs[k] = fmt.Errorf("%s %q: %w", p.kind, id, errdefs.ErrNotFound)
		case p.slots[i].state == slotUnplugging:
			// Asked already: still waiting for the guest.
			errs[k] = fmt.Errorf("device %s: %w", p.slots[i].dev, errNotReleased)
		default:
			devs, ports, of = append(devs, p.slots[i].dev), append(ports, i), append(of, k)
		}
	}
	if len(devs) == 0 {
		return errs
	}
	gone := v.unplugDevices(ctx, q, devs)
	// The wait may have used up ctx: what the gone devices used is
	// released on a fresh bound, as a rollback's steps are.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	for j, err := range gone {
		i, k := ports[j], of[j]
		switch {
		case errors.Is(err, errNotReleased):
			p.slots[i].state = slotUnplugging
			errs[k] = err
		case err != nil:
			errs[k] = err
		default:
			if errs[k] = v.releaseSlot(rctx, q, p, i); errs[k] != nil {
				// The device is gone but what it used is not
				// released: settle tries again, as for a device
				// the guest let go late.
				p.slots[i].state = slotUnplugging
			}
		}
	}
	return errs
}

func (v *VM) unmarkUnplugging(dev string) {
	v.mu.Lock()
	delete(v.unplugging, dev)
	v.mu.Unlock()
}

// lateUnplug marks one unplug of a device that stopped waiting for the
// guest; guarded by VM.mu.
type lateUnplug struct {
	// deleted: QEMU reported the device deleted, and releaseLate runs.
	deleted bool
}

// releaseLate frees the port of dev, whose DEVICE_DELETED came after
// the unplug u stopped waiting: it runs in a goroutine of its own, one per
// such unplug (deviceDeleted starts it once), bounded by rollbackTimeout
// once it holds the table's mutex. While it waited for the mutex, the
// port may have been freed (settle) and taken by a new device of the same
// ID: it acts only while u is still the device's mark.
func (v *VM) releaseLate(dev string, u *lateUnplug) {
	defer v.late.Done()
	mu, p := &v.blkMu, &v.blkPorts
	if strings.HasPrefix(dev, nicDevPrefix) {
		mu, p = &v.nicMu, &v.nicPorts
	}
	mu.Lock()
	defer mu.Unlock()
	v.mu.Lock()
	q, st, current := v.qmp, v.state, v.unplugging[dev] == u
	v.mu.Unlock()
	if st != stateRunning && st != statePaused {
		// The device went with the VM.
		return
	}
	if !current {
		// The port was freed already; it may hold a new device now.
		return
	}
	i := p.findDev(dev)
	if i < 0 || p.slots[i].state != slotUnplugging && p.slots[i].state != slotUnsure {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	if err := v.releaseSlot(ctx, q, p, i); err != nil {
		// settle tries again at the next hot-add.
		log.G(ctx).WithError(err).WithField("vm", v.cfg.ID).Warn("releasing a device the guest let go late")
	}
}

// qmpUndo is a stack of QMP steps that undo a half-done hot-add.
type qmpUndo []func(ctx context.Context) error

func (u *qmpUndo) push(f func(ctx context.Context) error) { *u = append(*u, f) }

// run undoes the steps, last first, when *errp is set, joining their
// failures to it. The caller's ctx may be what failed: the steps get a
// fresh one, bounded by rollbackTimeout.
func (u qmpUndo) run(ctx context.Context, errp *error) {
	if *errp == nil {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](rctx); err != nil {
			*errp = errors.Join(*errp, fmt.Errorf("undoing a step: %w", err))
		}
	}
}
