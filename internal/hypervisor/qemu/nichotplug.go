package qemu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// maxHotplugNICs bounds the root ports reserved for hot-added NICs: each
// takes a slot of pcie.0 (32, a few used by the machine and the boot
// devices) and a share of the 64 KiB I/O port space (4 KiB per port).
const maxHotplugNICs = 8

// nicPortID names the root port number i reserved for a hot-added NIC.
func nicPortID(i uint32) string { return fmt.Sprintf("nicport%d", i) }

// nicDevPrefix begins the QEMU device ID of a hot-added NIC.
const nicDevPrefix = "nic-"

// AddNetwork hot-adds a virtio-net-pci NIC on a q35 machine: it passes the
// tap descriptors to QEMU over the monitor socket (getfd, one SCM_RIGHTS
// message per descriptor), creates the tap netdev from them (netdev_add)
// and plugs the device into a free root port of those the argv reserved
// (Config.HotplugNICs). QEMU keeps its own copies of the descriptors; the
// caller keeps and closes n.FDs. When a step fails, the steps before it are
// undone, so nothing is left half added. The guest gets the device through
// PCI hotplug (ACPI on q35); the agent finds it by its MAC address.
//
// On microvm it returns an ErrNotImplemented-class error. A hot-added NIC
// needs n.FDs: QEMU opens no tap by name once it runs.
func (v *VM) AddNetwork(ctx context.Context, n hypervisor.NetworkDevice) error {
	return v.AddNetworks(ctx, []hypervisor.NetworkDevice{n})
}

// AddNetworks hot-adds the NICs ns as AddNetwork does, all or none: before
// anything reaches QEMU it checks every NIC and that enough ports are free
// (ErrResourceExhausted naming both counts); when one fails, the ones it
// added are unplugged again (each wait for the guest bounded as for a
// disk; a NIC the guest keeps holds its port until QEMU shows it gone, at
// the latest until the VM stops).
func (v *VM) AddNetworks(ctx context.Context, ns []hypervisor.NetworkDevice) (retErr error) {
	if v.layout.machine == MachineMicroVM {
		return fmt.Errorf("vm %s: the %s machine cannot hot-add devices: %w", v.cfg.ID, MachineMicroVM, errdefs.ErrNotImplemented)
	}
	for i, n := range ns {
		if err := validateNetwork(n); err != nil {
			return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
		}
		if len(n.FDs) == 0 {
			return fmt.Errorf("vm %s: network %q: a hot-added NIC needs tap file descriptors: %w", v.cfg.ID, n.ID, errdefs.ErrInvalidArgument)
		}
		if slices.ContainsFunc(ns[:i], func(b hypervisor.NetworkDevice) bool { return b.ID == n.ID }) {
			return fmt.Errorf("vm %s: network %q named twice: %w", v.cfg.ID, n.ID, errdefs.ErrInvalidArgument)
		}
	}

	v.nicMu.Lock()
	defer v.nicMu.Unlock()
	q, err := v.hotplugQMP("adding networks")
	if err != nil {
		return err
	}
	p := &v.nicPorts
	for _, n := range ns {
		if slices.ContainsFunc(v.cfg.Networks, func(b hypervisor.NetworkDevice) bool { return b.ID == n.ID }) || p.find(n.ID) >= 0 {
			return fmt.Errorf("vm %s: a network named %q is already there: %w", v.cfg.ID, n.ID, errdefs.ErrAlreadyExists)
		}
	}
	if p.free() < len(ns) {
		if err := v.settle(ctx, q, p); err != nil {
			log.G(ctx).WithError(err).WithField("vm", v.cfg.ID).Warn("hotplug ports not settled")
		}
	}
	if free := p.free(); free < len(ns) {
		return fmt.Errorf("vm %s: adding %d NICs: %d of its %d NIC hotplug slots are free: %w",
			v.cfg.ID, len(ns), free, len(p.slots), errdefs.ErrResourceExhausted)
	}

	var added []string
	defer func() {
		if retErr == nil {
			return
		}
		if len(added) == 0 {
			return
		}
		// The caller's ctx may be what failed; the unplugs go out
		// together, and their one wait is bounded by the unplug wait.
		last := slices.Clone(added)
		slices.Reverse(last)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.unplugWait+rollbackTimeout)
		defer cancel()
		for k, err := range v.hotRemoveAll(rctx, q, p, last) {
			if err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("removing network %q again: %w", last[k], err))
			}
		}
	}()
	for _, n := range ns {
		if err := v.hotAdd(ctx, q, p, n.ID, nicDevPrefix+n.ID, func(ctx context.Context, port string) (releaseFunc, error) {
			return v.plugNIC(ctx, q, n, port)
		}); err != nil {
			return fmt.Errorf("vm %s: adding network %q: %w", v.cfg.ID, n.ID, err)
		}
		added = append(added, n.ID)
		log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "network": n.ID, "port": p.portID(uint32(p.find(n.ID)))}).Info("nic hot-added")
	}
	return nil
}

// plugNIC runs the QMP steps of AddNetwork, undoing the done ones when a
// later one fails, and returns what deletes the NIC's netdev once its
// device is gone; the caller holds nicMu.
func (v *VM) plugNIC(ctx context.Context, q *qmpConn, n hypervisor.NetworkDevice, port string) (rel releaseFunc, retErr error) {
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

	names := make([]string, len(n.FDs))
	for i, fd := range n.FDs {
		// Names are never reused: a descriptor whose closefd failed keeps
		// its own.
		v.fdSeq++
		name := fmt.Sprintf("tapfd%d", v.fdSeq)
		// Undone even when getfd fails: a reply lost to a timeout may hide
		// a descriptor QEMU took.
		undo.push(func(ctx context.Context) error {
			// netdev_add takes the descriptors it used out of the
			// monitor's list; only those it did not take are closed here.
			if _, err := q.execute(ctx, "closefd", map[string]any{"fdname": name}); err != nil && !errdefs.IsUnknown(err) {
				return err
			}
			return nil
		})
		if _, err := q.executeFD(ctx, "getfd", map[string]any{"fdname": name}, int(fd)); err != nil {
			return nil, err
		}
		names[i] = name
	}

	netdev := "net-" + n.ID
	args := map[string]any{"type": "tap", "id": netdev}
	if len(names) == 1 {
		args["fd"] = names[0]
	} else {
		args["fds"] = strings.Join(names, ":")
	}
	// The undo is pushed before netdev_add too: a reply lost to a
	// timeout may hide a netdev QEMU made, which holds the taps'
	// descriptors (a netdev that is not there is no error).
	netdevMade := false
	undo.push(func(ctx context.Context) error {
		if !netdevMade {
			return nil
		}
		if _, err := q.execute(ctx, "netdev_del", map[string]any{"id": netdev}); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
		return nil
	})
	if _, err := q.execute(ctx, "netdev_add", args); err != nil {
		netdevMade = lostAnswer(err)
		return nil, err
	}
	netdevMade = true
	release = func(ctx context.Context, q *qmpConn) error {
		if _, err := q.execute(ctx, "netdev_del", map[string]any{"id": netdev}); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
		return nil
	}

	devID := nicDevPrefix + n.ID
	dev := map[string]any{"driver": "virtio-net-pci", "id": devID, "netdev": netdev, "bus": port}
	if n.MAC != "" {
		dev["mac"] = strings.ToLower(n.MAC)
	}
	if n.MTU != 0 {
		dev["host_mtu"] = n.MTU
	}
	if q := len(n.FDs); q > 1 {
		dev["mq"] = true
		dev["vectors"] = 2*q + 2
	}
	// A device_add whose answer is lost may have plugged the device: it
	// is unplugged before its netdev goes. When the guest does not let it
	// go, the port waits for it (hotAdd) with the release.
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
