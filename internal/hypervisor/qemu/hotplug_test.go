package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// fakeMachine plays the hotplug part of a q35 QEMU over fakeQMPArgs: CPU
// slots, memory backends and DIMMs.
type fakeMachine struct {
	mu sync.Mutex
	// cpus are the slots; plugged ones have a qom-path.
	cpus []hotpluggableCPU
	// backends maps backend ids to sizes in bytes.
	backends map[string]uint64
	dimms    []memoryDevice
	// fail names the commands (or "device_add <driver>") that fail.
	fail map[string]bool
	// log holds every command after qmp_capabilities, with its arguments.
	log []string
	// devices are the IDs of the plugged virtio-blk devices; fdsets
	// counts the fd sets add-fd made. With fail["DEVICE_DELETED"] the
	// guest never releases a device, with fail["DEVICE_DELETED <id>"]
	// never that one.
	devices []string
	fdsets  int
	// open are the fd sets add-fd made and remove-fd has not removed.
	open map[int]bool
	// delay holds back the answer to a command, as a QEMU busy past the
	// caller's deadline; the answer still comes, late.
	delay map[string]time.Duration
	// nodes are the block nodes blockdev-add made and blockdev-del has
	// not deleted.
	nodes map[string]bool
	// events go out after the next answer (a late DEVICE_DELETED).
	events []string
}

// letGo plays a guest that releases dev late, after the driver stopped
// waiting: QEMU drops the device and, with event, reports it with its
// next answer; without, the event is lost to the driver.
func (m *fakeMachine) letGo(dev string, event bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.devices = slices.DeleteFunc(m.devices, func(d string) bool { return d == dev })
	if event {
		ev, _ := json.Marshal(map[string]any{"event": "DEVICE_DELETED", "data": map[string]string{"device": dev, "path": "/machine/peripheral/" + dev}})
		m.events = append(m.events, string(ev))
	}
}

func newFakeMachine(plugged, slots int) *fakeMachine {
	m := &fakeMachine{backends: map[string]uint64{}, fail: map[string]bool{}, open: map[int]bool{}, delay: map[string]time.Duration{}, nodes: map[string]bool{}}
	// QEMU lists the slots highest first.
	for i := slots - 1; i >= 0; i-- {
		c := hotpluggableCPU{Type: "qemu64-x86_64-cpu", Count: 1,
			Props: map[string]int64{"node-id": 0, "socket-id": 0, "core-id": int64(i), "thread-id": 0}}
		if i < plugged {
			c.QOMPath = fmt.Sprintf("/machine/unattached/device[%d]", i)
		}
		m.cpus = append(m.cpus, c)
	}
	return m
}

func (m *fakeMachine) answer(cmd string, raw json.RawMessage, id string) []string {
	m.mu.Lock()
	d := m.delay[cmd]
	m.mu.Unlock()
	time.Sleep(d)
	m.mu.Lock()
	defer m.mu.Unlock()
	reply := func(v any) []string {
		b, _ := json.Marshal(map[string]any{"return": v, "id": id})
		lines := append([]string{string(b)}, m.events...)
		m.events = nil
		return lines
	}
	fail := func(class, desc string) []string {
		b, _ := json.Marshal(map[string]any{"error": map[string]string{"class": class, "desc": desc}, "id": id})
		lines := append([]string{string(b)}, m.events...)
		m.events = nil
		return lines
	}
	if cmd == "qmp_capabilities" {
		return reply(struct{}{})
	}
	m.log = append(m.log, strings.TrimSpace(cmd+" "+string(raw)))
	var args map[string]any
	_ = json.Unmarshal(raw, &args)
	if m.fail[cmd] || cmd == "device_add" && (m.fail["device_add "+args["driver"].(string)] || m.fail["device_add "+args["id"].(string)]) {
		return fail("GenericError", cmd+" failed as the test wants")
	}
	switch cmd {
	case "getfd", "closefd", "netdev_add", "netdev_del":
		return reply(struct{}{})
	case "blockdev-add":
		m.nodes[args["node-name"].(string)] = true
		return reply(struct{}{})
	case "blockdev-del":
		node := args["node-name"].(string)
		if !m.nodes[node] {
			return fail("GenericError", "Failed to find node with node-name='"+node+"'")
		}
		if slices.Contains(m.devices, "blkdev-"+strings.TrimPrefix(node, "blk-")) {
			return fail("GenericError", "Node "+node+" is in use")
		}
		delete(m.nodes, node)
		return reply(struct{}{})
	case "query-named-block-nodes":
		var nodes []map[string]string
		for n := range m.nodes {
			nodes = append(nodes, map[string]string{"node-name": n})
		}
		return reply(nodes)
	case "qom-list":
		props := []map[string]string{{"name": "type", "type": "string"}}
		for _, d := range m.devices {
			props = append(props, map[string]string{"name": d, "type": "child<device>"})
		}
		return reply(props)
	case "remove-fd":
		set := int(args["fdset-id"].(float64))
		if !m.open[set] {
			return fail("GenericError", fmt.Sprintf("File descriptor named 'fdset-id:%d' not found", set))
		}
		delete(m.open, set)
		return reply(struct{}{})
	case "add-fd":
		m.fdsets++
		set := m.fdsets
		if v, ok := args["fdset-id"]; ok {
			set = int(v.(float64))
		}
		m.open[set] = true
		return reply(map[string]int{"fdset-id": set, "fd": 20 + m.fdsets})
	case "device_del":
		i := slices.Index(m.devices, args["id"].(string))
		if i < 0 {
			return fail("DeviceNotFound", "Device '"+args["id"].(string)+"' not found")
		}
		if m.fail["DEVICE_DELETED"] || m.fail["DEVICE_DELETED "+args["id"].(string)] {
			// A guest that never releases the device (any, or this one).
			return reply(struct{}{})
		}
		m.devices = slices.Delete(m.devices, i, i+1)
		ev, _ := json.Marshal(map[string]any{"event": "DEVICE_DELETED", "data": map[string]string{"device": args["id"].(string), "path": "/machine/peripheral/" + args["id"].(string)}})
		inner, _ := json.Marshal(map[string]any{"event": "DEVICE_DELETED", "data": map[string]string{"path": "/machine/peripheral/" + args["id"].(string) + "/virtio-backend"}})
		return append(reply(struct{}{}), string(inner), string(ev))
	case "query-hotpluggable-cpus":
		return reply(m.cpus)
	case "query-memory-devices":
		return reply(m.dimms)
	case "object-add":
		m.backends[args["id"].(string)] = uint64(args["size"].(float64))
		return reply(struct{}{})
	case "object-del":
		if slices.ContainsFunc(m.dimms, func(d memoryDevice) bool { return "mem-"+d.Data.ID == args["id"] }) {
			return fail("GenericError", "in use")
		}
		delete(m.backends, args["id"].(string))
		return reply(struct{}{})
	case "device_add":
		switch args["driver"] {
		case "pc-dimm":
			size, ok := m.backends[args["memdev"].(string)]
			if !ok {
				return fail("DeviceNotFound", "no backend")
			}
			var d memoryDevice
			d.Type, d.Data.ID, d.Data.Size = "dimm", args["id"].(string), size
			m.dimms = append(m.dimms, d)
		case "qemu64-x86_64-cpu":
			for i, c := range m.cpus {
				if c.Props["core-id"] == int64(args["core-id"].(float64)) {
					if c.QOMPath != "" {
						return fail("GenericError", "slot in use")
					}
					m.cpus[i].QOMPath = "/machine/peripheral/" + args["id"].(string)
				}
			}
		case "virtio-net-pci", "virtio-blk-pci":
			m.devices = append(m.devices, args["id"].(string))
		default:
			return fail("GenericError", "unknown driver")
		}
		return reply(struct{}{})
	}
	return fail("CommandNotFound", cmd)
}

// runningVM returns a VM of cfg that believes it runs, talking to m.
func runningVM(t *testing.T, cfg hypervisor.Config, machine string, m *fakeMachine) *VM {
	t.Helper()
	v, err := New(cfg, Options{Machine: machine, Accel: AccelTCG, TSCKHz: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, fakeQMPArgs(t, m.answer), func() bool { return true }, v.onEvent)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.close)
	v.state, v.qmp = stateRunning, q
	return v
}

func hotplugConfig() hypervisor.Config {
	c := baseConfig()
	c.SharedMemory = true
	c.MaxVCPUs, c.MaxMemoryMiB = 4, 1000 // memory: 512 + 3 blocks of 128
	return c
}

func TestResize(t *testing.T) {
	type step struct {
		vcpus, memoryMiB uint32
		want             hypervisor.Size
		class            error
	}
	// slotSteps grow memory block by block past the last free slot.
	var slotSteps []step
	for i := uint32(1); i <= maxMemorySlots; i++ {
		slotSteps = append(slotSteps, step{memoryMiB: 512 + i*128, want: hypervisor.Size{VCPUs: 2, MemoryMiB: 512 + i*128}})
	}
	slotSteps = append(slotSteps, step{memoryMiB: 512 + (maxMemorySlots+1)*128, class: errdefs.ErrResourceExhausted})
	tests := []struct {
		name string
		// maxMemoryMiB replaces hotplugConfig's limit when set.
		maxMemoryMiB uint32
		fail         []string
		steps        []step
		// log is the QMP commands the steps send, past the capabilities.
		log string
	}{
		{
			name: "grow cpus then memory twice",
			steps: []step{
				{vcpus: 3, want: hypervisor.Size{VCPUs: 3, MemoryMiB: 512}},
				{vcpus: 1, memoryMiB: 600, want: hypervisor.Size{VCPUs: 3, MemoryMiB: 640}},
				{vcpus: 4, memoryMiB: 896, want: hypervisor.Size{VCPUs: 4, MemoryMiB: 896}},
				{vcpus: 4, memoryMiB: 896, want: hypervisor.Size{VCPUs: 4, MemoryMiB: 896}},
			},
			log: "resize-grow.qmp",
		},
		{
			name: "beyond the limits",
			steps: []step{
				{vcpus: 5, class: errdefs.ErrInvalidArgument},
				{memoryMiB: 897, class: errdefs.ErrInvalidArgument},
			},
		},
		{
			name: "dimm refused",
			fail: []string{"device_add pc-dimm"},
			steps: []step{
				{vcpus: 3, memoryMiB: 1000 - 104, want: hypervisor.Size{VCPUs: 3, MemoryMiB: 512}, class: errdefs.ErrUnknown},
			},
			log: "resize-dimm-refused.qmp",
		},
		{
			name: "cpu refused",
			fail: []string{"device_add qemu64-x86_64-cpu"},
			steps: []step{
				{vcpus: 3, memoryMiB: 640, want: hypervisor.Size{VCPUs: 2, MemoryMiB: 512}, class: errdefs.ErrUnknown},
			},
		},
		{
			name:         "memory slots run out",
			maxMemoryMiB: 512 + (maxMemorySlots+4)*128,
			steps:        slotSteps,
		},
		{
			name: "query fails",
			fail: []string{"query-hotpluggable-cpus"},
			steps: []step{
				{vcpus: 3, class: errdefs.ErrUnknown},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 4)
			for _, f := range tc.fail {
				m.fail[f] = true
			}
			cfg := hotplugConfig()
			if tc.maxMemoryMiB != 0 {
				cfg.MaxMemoryMiB = tc.maxMemoryMiB
			}
			v := runningVM(t, cfg, MachineQ35, m)
			r, err := hypervisor.AsResizer(v)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				got, err := r.Resize(context.Background(), s.vcpus, s.memoryMiB)
				if s.class == nil && err != nil || s.class != nil && !errors.Is(err, s.class) {
					t.Fatalf("step %d: resize(%d, %d): got %v, want class %v", i, s.vcpus, s.memoryMiB, err, s.class)
				}
				if (s.class == nil || s.want != hypervisor.Size{}) && got != s.want {
					t.Errorf("step %d: resize(%d, %d) = %+v, want %+v", i, s.vcpus, s.memoryMiB, got, s.want)
				}
				if err != nil {
					t.Logf("step %d: %v", i, err)
				}
			}
			if tc.log != "" {
				m.mu.Lock()
				golden(t, filepath.Join("testdata", tc.log), strings.Join(m.log, "\n")+"\n")
				m.mu.Unlock()
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			for id := range m.backends {
				if !slices.ContainsFunc(m.dimms, func(d memoryDevice) bool { return "mem-"+d.Data.ID == id }) {
					t.Errorf("backend %s left without its dimm", id)
				}
			}
		})
	}
}

func TestResizeUnsupported(t *testing.T) {
	tests := []struct {
		name    string
		machine string
		state   state
		class   error
	}{
		{"microvm", MachineMicroVM, stateRunning, errdefs.ErrNotImplemented},
		{"not started", MachineQ35, stateCreated, errdefs.ErrFailedPrecondition},
		{"paused", MachineQ35, statePaused, errdefs.ErrFailedPrecondition},
		{"exited", MachineQ35, stateExited, hypervisor.ErrVMExited},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := vmIn(t, hotplugConfig(), tc.machine, tc.state)
			if _, err := v.Resize(context.Background(), 3, 640); !errors.Is(err, tc.class) {
				t.Errorf("got %v, want class %v", err, tc.class)
			}
		})
	}
}

func TestHeadroom(t *testing.T) {
	tests := []struct {
		name              string
		vcpus, maxVCPUs   uint32
		memMiB, maxMemMiB uint32
		machine           string
		want              headroom
	}{
		{"no limits", 2, 0, 512, 0, MachineQ35, headroom{}},
		{"limits at the boot size", 2, 2, 512, 512, MachineQ35, headroom{}},
		{"limits below the boot size", 4, 2, 1024, 512, MachineQ35, headroom{}},
		{"less than a block", 2, 0, 512, 639, MachineQ35, headroom{}},
		{"whole blocks", 2, 8, 512, 1000, MachineQ35, headroom{maxVCPUs: 8, maxMemoryMiB: 896, slots: 3}},
		{"slots capped", 1, 2, 512, 24576, MachineQ35, headroom{maxVCPUs: 2, maxMemoryMiB: 24576, slots: maxMemorySlots}},
		{"microvm", 2, 8, 512, 4096, MachineMicroVM, headroom{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := hypervisor.Config{VCPUs: tc.vcpus, MaxVCPUs: tc.maxVCPUs, MemoryMiB: tc.memMiB, MaxMemoryMiB: tc.maxMemMiB}
			if got := headroomOf(&c, tc.machine); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDIMMAddr(t *testing.T) {
	const gib, mib = uint64(1) << 30, uint64(1) << 20
	dev := func(typ string, at, size uint64) memoryDevice {
		var d memoryDevice
		d.Type, d.Data.Size = typ, size
		if typ == "dimm" {
			d.Data.Addr = at
		} else {
			d.Data.MemAddr = at
		}
		return d
	}
	for _, tc := range []struct {
		name string
		devs []memoryDevice
		want uint64
	}{
		{"no device: QEMU places it", nil, 0},
		{"only dimms: QEMU places it", []memoryDevice{dev("dimm", 4*gib, 256*mib)}, 0},
		{"after the root image, on a block boundary", []memoryDevice{dev("virtio-pmem", 4*gib, 12*mib)}, 4*gib + 128*mib},
		{"after a dimm that follows the root image", []memoryDevice{
			dev("virtio-pmem", 4*gib, 12*mib), dev("dimm", 4*gib+128*mib, 256*mib),
		}, 4*gib + 384*mib},
		{"a root image of whole blocks", []memoryDevice{dev("virtio-pmem", 4*gib, 256*mib)}, 4*gib + 256*mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dimmAddr(tc.devs); got != tc.want {
				t.Errorf("dimmAddr = %#x, want %#x", got, tc.want)
			}
		})
	}
}
