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
	if v.layout.machine == MachineMicroVM {
		return fmt.Errorf("vm %s: the %s machine cannot hot-add devices: %w", v.cfg.ID, MachineMicroVM, errdefs.ErrNotImplemented)
	}
	if err := validateNetwork(n); err != nil {
		return fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	if len(n.FDs) == 0 {
		return fmt.Errorf("vm %s: network %q: a hot-added NIC needs tap file descriptors: %w", v.cfg.ID, n.ID, errdefs.ErrInvalidArgument)
	}

	v.nicMu.Lock()
	defer v.nicMu.Unlock()
	v.mu.Lock()
	st, q := v.state, v.qmp
	v.mu.Unlock()
	switch st {
	case stateRunning, statePaused:
	case stateExited, stateStopped:
		return fmt.Errorf("vm %s: adding network %q: %w", v.cfg.ID, n.ID, hypervisor.ErrVMExited)
	default:
		return fmt.Errorf("vm %s is %s, not running: %w", v.cfg.ID, st, errdefs.ErrFailedPrecondition)
	}
	if slices.ContainsFunc(v.cfg.Networks, func(b hypervisor.NetworkDevice) bool { return b.ID == n.ID }) ||
		slices.Contains(v.nicPorts, n.ID) {
		return fmt.Errorf("vm %s: a network named %q is already there: %w", v.cfg.ID, n.ID, errdefs.ErrAlreadyExists)
	}
	port := slices.Index(v.nicPorts, "")
	if port < 0 {
		return fmt.Errorf("vm %s: adding network %q: all %d NIC hotplug slots are in use: %w",
			v.cfg.ID, n.ID, len(v.nicPorts), errdefs.ErrResourceExhausted)
	}
	if err := v.plugNIC(ctx, q, n, nicPortID(uint32(port))); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			// QEMU may have plugged the device before the answer was
			// lost: the port is not offered again.
			v.nicPorts[port] = "?" + n.ID
		}
		return fmt.Errorf("vm %s: adding network %q: %w", v.cfg.ID, n.ID, err)
	}
	v.nicPorts[port] = n.ID
	log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "network": n.ID, "port": nicPortID(uint32(port))}).Info("nic hot-added")
	return nil
}

// plugNIC runs the QMP steps of AddNetwork, undoing the done ones when a
// later one fails; the caller holds nicMu.
func (v *VM) plugNIC(ctx context.Context, q *qmpConn, n hypervisor.NetworkDevice, port string) (retErr error) {
	// The caller's ctx may be what failed: undo with a fresh one.
	var undo []func(context.Context) error
	defer func() {
		if retErr == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](rctx); err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("undoing a step: %w", err))
			}
		}
	}()

	names := make([]string, len(n.FDs))
	for i, fd := range n.FDs {
		// Names are never reused: a descriptor whose closefd failed keeps
		// its own.
		v.fdSeq++
		name := fmt.Sprintf("tapfd%d", v.fdSeq)
		// Undone even when getfd fails: a reply lost to a timeout may hide
		// a descriptor QEMU took.
		undo = append(undo, func(ctx context.Context) error {
			// netdev_add takes the descriptors it used out of the
			// monitor's list; only those it did not take are closed here.
			if _, err := q.execute(ctx, "closefd", map[string]any{"fdname": name}); err != nil && !errdefs.IsUnknown(err) {
				return err
			}
			return nil
		})
		if _, err := q.executeFD(ctx, "getfd", map[string]any{"fdname": name}, int(fd)); err != nil {
			return err
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
	if _, err := q.execute(ctx, "netdev_add", args); err != nil {
		return err
	}
	undo = append(undo, func(ctx context.Context) error {
		_, err := q.execute(ctx, "netdev_del", map[string]any{"id": netdev})
		return err
	})

	dev := map[string]any{"driver": "virtio-net-pci", "id": "nic-" + n.ID, "netdev": netdev, "bus": port}
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
	if _, err := q.execute(ctx, "device_add", dev); err != nil {
		return err
	}
	return nil
}
