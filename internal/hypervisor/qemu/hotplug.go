package qemu

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

const (
	// memoryBlockMiB is the memory block size of an x86_64 Linux guest
	// that boots with less than 64 GiB: the unit in which the guest brings
	// memory online, so DIMMs are whole multiples of it.
	memoryBlockMiB = 128
	// maxMemorySlots bounds the DIMM slots. Every DIMM is one more memory
	// region that vhost-user back ends map (virtiofsd takes 32, two of
	// which boot memory uses) and, under KVM, one more memory slot.
	maxMemorySlots = 16
	// rollbackTimeout bounds the QMP calls that undo half a hotplug.
	rollbackTimeout = 5 * time.Second
)

// headroom is how far a VM may grow by hotplug, as its argv declares it.
type headroom struct {
	// maxVCPUs is QEMU's maxcpus; 0 when no CPU can be added.
	maxVCPUs uint32
	// maxMemoryMiB is QEMU's maxmem: boot memory plus whole memory blocks
	// up to Config.MaxMemoryMiB; 0 when no block fits.
	maxMemoryMiB uint32
	// slots is the number of DIMM slots when maxMemoryMiB is set.
	slots uint32
}

// headroomOf derives the hotplug headroom from cfg's limits. microvm cannot
// hotplug: it gets none, and its argv stays as without limits.
func headroomOf(cfg *hypervisor.Config, machine string) headroom {
	var h headroom
	if machine == MachineMicroVM {
		return h
	}
	if cfg.MaxVCPUs > cfg.VCPUs {
		h.maxVCPUs = cfg.MaxVCPUs
	}
	if cfg.MaxMemoryMiB > cfg.MemoryMiB {
		if blocks := (cfg.MaxMemoryMiB - cfg.MemoryMiB) / memoryBlockMiB; blocks > 0 {
			h.maxMemoryMiB = cfg.MemoryMiB + blocks*memoryBlockMiB
			h.slots = min(blocks, maxMemorySlots)
		}
	}
	return h
}

// Resize grows the VM by hot-adding vCPUs (device_add of the CPU type at
// the free socket/core/thread that query-hotpluggable-cpus lists) and one
// DIMM (a memfd backend, shared when Config.SharedMemory, plus a pc-dimm)
// whose size is the missing memory rounded up to whole guest memory
// blocks. The size it starts from and returns is what QEMU reports, so a
// Resize that failed half way is seen by the next one. On microvm it
// returns an ErrNotImplemented-class error.
func (v *VM) Resize(ctx context.Context, vcpus, memoryMiB uint32) (hypervisor.Size, error) {
	if v.layout.machine == MachineMicroVM {
		return hypervisor.Size{}, fmt.Errorf("vm %s: the %s machine cannot hotplug cpus or memory: %w",
			v.cfg.ID, MachineMicroVM, errdefs.ErrNotImplemented)
	}
	h := headroomOf(&v.cfg, v.layout.machine)
	maxVCPUs, maxMemoryMiB := max(h.maxVCPUs, v.cfg.VCPUs), max(h.maxMemoryMiB, v.cfg.MemoryMiB)
	if vcpus > maxVCPUs {
		return hypervisor.Size{}, fmt.Errorf("vm %s: %d vCPUs is beyond its limit of %d: %w",
			v.cfg.ID, vcpus, maxVCPUs, errdefs.ErrInvalidArgument)
	}
	if memoryMiB > maxMemoryMiB {
		return hypervisor.Size{}, fmt.Errorf("vm %s: %d MiB of memory is beyond its limit of %d MiB: %w",
			v.cfg.ID, memoryMiB, maxMemoryMiB, errdefs.ErrInvalidArgument)
	}

	v.resizeMu.Lock()
	defer v.resizeMu.Unlock()
	v.mu.Lock()
	st, q := v.state, v.qmp
	v.mu.Unlock()
	switch st {
	case stateRunning:
	case stateExited, stateStopped:
		return hypervisor.Size{}, fmt.Errorf("vm %s: resize: %w", v.cfg.ID, hypervisor.ErrVMExited)
	default:
		return hypervisor.Size{}, fmt.Errorf("vm %s is %s, not running: %w", v.cfg.ID, st, errdefs.ErrFailedPrecondition)
	}

	cpus, err := queryCPUs(ctx, q)
	if err != nil {
		return hypervisor.Size{}, fmt.Errorf("vm %s: resize: %w", v.cfg.ID, err)
	}
	devs, err := queryMemoryDevices(ctx, q)
	if err != nil {
		return hypervisor.Size{}, fmt.Errorf("vm %s: resize: %w", v.cfg.ID, err)
	}
	dimms := slices.DeleteFunc(slices.Clone(devs), func(d memoryDevice) bool { return d.Type != "dimm" })
	size := v.sizeOf(cpus, dimms)
	from := size
	if vcpus > size.VCPUs {
		want := vcpus - size.VCPUs
		n, err := plugCPUs(ctx, q, cpus, want)
		if err != nil {
			err = fmt.Errorf("vm %s: adding %d vCPUs to %d (%d added): %w", v.cfg.ID, want, size.VCPUs, n, err)
		}
		size.VCPUs += n
		if err != nil {
			return size, err
		}
	}
	if memoryMiB > size.MemoryMiB {
		add := (memoryMiB - size.MemoryMiB + memoryBlockMiB - 1) / memoryBlockMiB * memoryBlockMiB
		if uint32(len(dimms)) >= h.slots {
			return size, fmt.Errorf("vm %s: adding %d MiB of memory: all %d memory slots are in use: %w",
				v.cfg.ID, add, h.slots, errdefs.ErrResourceExhausted)
		}
		if err := v.plugDIMM(ctx, q, add, dimmAddr(devs)); err != nil {
			return size, fmt.Errorf("vm %s: adding %d MiB of memory to %d MiB: %w", v.cfg.ID, add, size.MemoryMiB, err)
		}
		size.MemoryMiB += add
	}
	if size != from {
		log.G(ctx).WithFields(log.Fields{"vm": v.cfg.ID, "vcpus": size.VCPUs, "memory_mib": size.MemoryMiB}).Info("vm grown")
	}
	return size, nil
}

// hotpluggableCPU is one entry of query-hotpluggable-cpus. On x86 every
// property (socket-id, die-id, core-id, thread-id, node-id) is a number.
type hotpluggableCPU struct {
	Type    string           `json:"type"`
	Count   uint32           `json:"vcpus-count"`
	QOMPath string           `json:"qom-path"`
	Props   map[string]int64 `json:"props"`
}

// memoryDevice is one entry of query-memory-devices.
type memoryDevice struct {
	Type string `json:"type"`
	Data struct {
		ID   string `json:"id"`
		Size uint64 `json:"size"`
		// Addr is a DIMM's guest physical address; MemAddr a
		// virtio-pmem device's (the root image).
		Addr    uint64 `json:"addr"`
		MemAddr uint64 `json:"memaddr"`
	} `json:"data"`
}

// dimmAddr is where the next DIMM goes: 0 (QEMU's choice) when the device
// memory holds only DIMMs, which are whole memory blocks and so stay
// aligned; else the first memory block boundary after every device. The
// guest onlines memory in whole blocks and refuses a DIMM that does not
// start on one, and QEMU would place it right after the root image's
// virtio-pmem region, which is only 2 MiB aligned. The alignment gap fits:
// QEMU sizes device memory with 1 GiB of room per DIMM slot.
func dimmAddr(devs []memoryDevice) uint64 {
	var end uint64
	others := false
	for _, d := range devs {
		start := d.Data.Addr
		if d.Type != "dimm" {
			others, start = true, d.Data.MemAddr
		}
		end = max(end, start+d.Data.Size)
	}
	if !others {
		return 0
	}
	const block = memoryBlockMiB << 20
	return (end + block - 1) / block * block
}

// sizeOf is the VM's size by QEMU's account: the plugged vCPUs, and the
// boot memory plus the DIMMs.
func (v *VM) sizeOf(cpus []hotpluggableCPU, dimms []memoryDevice) hypervisor.Size {
	s := hypervisor.Size{MemoryMiB: v.cfg.MemoryMiB}
	for _, c := range cpus {
		if c.QOMPath != "" {
			s.VCPUs += max(c.Count, 1)
		}
	}
	for _, d := range dimms {
		s.MemoryMiB += uint32(d.Data.Size >> 20)
	}
	return s
}

func queryCPUs(ctx context.Context, q *qmpConn) ([]hotpluggableCPU, error) {
	r, err := q.execute(ctx, "query-hotpluggable-cpus", nil)
	if err != nil {
		return nil, err
	}
	var cpus []hotpluggableCPU
	if err := json.Unmarshal(r, &cpus); err != nil {
		return nil, fmt.Errorf("qmp query-hotpluggable-cpus: %w", err)
	}
	return cpus, nil
}

func queryMemoryDevices(ctx context.Context, q *qmpConn) ([]memoryDevice, error) {
	r, err := q.execute(ctx, "query-memory-devices", nil)
	if err != nil {
		return nil, err
	}
	var devs []memoryDevice
	if err := json.Unmarshal(r, &devs); err != nil {
		return nil, fmt.Errorf("qmp query-memory-devices: %w", err)
	}
	return devs, nil
}

// cpuTopology is the order in which free CPU slots are filled.
var cpuTopology = []string{"socket-id", "die-id", "core-id", "thread-id"}

// plugCPUs adds n vCPUs in the lowest free slots of cpus and returns how
// many it added.
func plugCPUs(ctx context.Context, q *qmpConn, cpus []hotpluggableCPU, n uint32) (uint32, error) {
	free := slices.DeleteFunc(slices.Clone(cpus), func(c hotpluggableCPU) bool { return c.QOMPath != "" })
	slices.SortFunc(free, func(a, b hotpluggableCPU) int {
		for _, k := range cpuTopology {
			if c := cmp.Compare(a.Props[k], b.Props[k]); c != 0 {
				return c
			}
		}
		return 0
	})
	var added uint32
	for _, c := range free {
		if added >= n {
			break
		}
		args := map[string]any{"driver": c.Type, "id": cpuID(c)}
		for k, val := range c.Props {
			args[k] = val
		}
		if _, err := q.execute(ctx, "device_add", args); err != nil {
			return added, err
		}
		added += max(c.Count, 1)
	}
	if added < n {
		return added, fmt.Errorf("qemu has no free cpu slot for %d more vCPUs: %w", n-added, errdefs.ErrResourceExhausted)
	}
	return added, nil
}

// cpuID names a hot-added CPU after its slot.
func cpuID(c hotpluggableCPU) string {
	id := "cpu"
	for _, k := range cpuTopology {
		if val, ok := c.Props[k]; ok {
			id += fmt.Sprintf("-%d", val)
		}
	}
	return id
}

// plugDIMM adds one DIMM of mib MiB; the caller holds resizeMu. When the device cannot be added, it
// deletes the backend it created for it, so nothing is left half added.
// addr, when not 0, is the DIMM's guest physical address (dimmAddr).
func (v *VM) plugDIMM(ctx context.Context, q *qmpConn, mib uint32, addr uint64) error {
	// Ids are never reused: a backend whose removal failed keeps its own.
	v.dimmSeq++
	id := fmt.Sprintf("dimm%d", v.dimmSeq)
	backend := "mem-" + id
	if _, err := q.execute(ctx, "object-add", map[string]any{
		"qom-type": "memory-backend-memfd",
		"id":       backend,
		"size":     uint64(mib) << 20,
		"share":    v.cfg.SharedMemory,
	}); err != nil {
		return err
	}
	dev := map[string]any{"driver": "pc-dimm", "id": id, "memdev": backend}
	if addr != 0 {
		dev["addr"] = addr
	}
	if _, err := q.execute(ctx, "device_add", dev); err != nil {
		// The caller's ctx may be what failed: undo with a fresh one.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if _, derr := q.execute(rctx, "object-del", map[string]any{"id": backend}); derr != nil {
			return errors.Join(err, fmt.Errorf("removing the backend of the dimm that failed: %w", derr))
		}
		return err
	}
	return nil
}
