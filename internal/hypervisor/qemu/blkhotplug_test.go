package qemu

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestBlockHotplug(t *testing.T) {
	f := tempDisk(t)
	disk := func(id string, ro bool) hypervisor.BlockDevice {
		return hypervisor.BlockDevice{ID: id, File: f, ReadOnly: ro, Serial: "s-" + id}
	}
	type step struct {
		add    *hypervisor.BlockDevice
		remove string
		class  error
	}
	add := func(b hypervisor.BlockDevice, class error) step { return step{add: &b, class: class} }
	remove := func(id string, class error) step { return step{remove: id, class: class} }
	tests := []struct {
		name  string
		fail  []string
		steps []step
		// log is the QMP commands, one per line.
		log string
	}{
		{
			name:  "add read-write and read-only, remove one, reuse its port",
			steps: []step{add(disk("r1", false), nil), add(disk("r2", true), nil), remove("r1", nil), add(disk("r3", false), nil)},
			log: `add-fd {"fdset-id":1}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/1","read-only":false},"node-name":"blk-r1","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r1","driver":"virtio-blk-pci","id":"blkdev-r1","serial":"s-r1"}
add-fd {"fdset-id":2}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/2","read-only":true},"node-name":"blk-r2","read-only":true}
device_add {"bus":"blkport1","drive":"blk-r2","driver":"virtio-blk-pci","id":"blkdev-r2","serial":"s-r2"}
device_del {"id":"blkdev-r1"}
blockdev-del {"node-name":"blk-r1"}
remove-fd {"fdset-id":1}
add-fd {"fdset-id":3}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/3","read-only":false},"node-name":"blk-r3","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r3","driver":"virtio-blk-pci","id":"blkdev-r3","serial":"s-r3"}`,
		},
		{
			name:  "same id twice, then no free port, unknown remove",
			steps: []step{add(disk("r1", false), nil), add(disk("r1", false), errdefs.ErrAlreadyExists), add(disk("r2", false), nil), add(disk("r3", false), errdefs.ErrResourceExhausted), remove("nope", errdefs.ErrNotFound)},
			log: `add-fd {"fdset-id":1}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/1","read-only":false},"node-name":"blk-r1","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r1","driver":"virtio-blk-pci","id":"blkdev-r1","serial":"s-r1"}
add-fd {"fdset-id":2}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/2","read-only":false},"node-name":"blk-r2","read-only":false}
device_add {"bus":"blkport1","drive":"blk-r2","driver":"virtio-blk-pci","id":"blkdev-r2","serial":"s-r2"}`,
		},
		{
			name:  "device refused: node deleted, descriptor closed, port free",
			fail:  []string{"device_add virtio-blk-pci"},
			steps: []step{add(disk("r1", false), errdefs.ErrUnknown)},
			log: `add-fd {"fdset-id":1}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/1","read-only":false},"node-name":"blk-r1","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r1","driver":"virtio-blk-pci","id":"blkdev-r1","serial":"s-r1"}
blockdev-del {"node-name":"blk-r1"}
remove-fd {"fdset-id":1}`,
		},
		{
			name:  "node refused: descriptor closed",
			fail:  []string{"blockdev-add"},
			steps: []step{add(disk("r1", true), errdefs.ErrUnknown)},
			log: `add-fd {"fdset-id":1}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/1","read-only":true},"node-name":"blk-r1","read-only":true}
remove-fd {"fdset-id":1}`,
		},
		{
			name: "guest never releases: remove returns after the bound, the port is not reused",
			fail: []string{"DEVICE_DELETED"},
			steps: []step{add(disk("r1", false), nil), add(disk("r2", false), nil), remove("r1", nil), remove("r1", errdefs.ErrNotFound),
				add(disk("r3", false), errdefs.ErrResourceExhausted)},
			log: `add-fd {"fdset-id":1}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/1","read-only":false},"node-name":"blk-r1","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r1","driver":"virtio-blk-pci","id":"blkdev-r1","serial":"s-r1"}
add-fd {"fdset-id":2}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/2","read-only":false},"node-name":"blk-r2","read-only":false}
device_add {"bus":"blkport1","drive":"blk-r2","driver":"virtio-blk-pci","id":"blkdev-r2","serial":"s-r2"}
device_del {"id":"blkdev-r1"}
qom-list {"path":"/machine/peripheral"}`,
		},
		{
			// The disk is still plugged: its ID is not free for another
			// disk (QEMU would refuse the node name as a generic error).
			name:  "a forgotten disk's id stays taken",
			fail:  []string{"DEVICE_DELETED"},
			steps: []step{add(disk("r1", false), nil), remove("r1", nil), add(disk("r1", false), errdefs.ErrAlreadyExists)},
			log: `add-fd {"fdset-id":1}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/1","read-only":false},"node-name":"blk-r1","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r1","driver":"virtio-blk-pci","id":"blkdev-r1","serial":"s-r1"}
device_del {"id":"blkdev-r1"}`,
		},
		{
			name: "bad input reaches no qmp",
			steps: []step{add(hypervisor.BlockDevice{ID: "r1"}, errdefs.ErrInvalidArgument),
				add(hypervisor.BlockDevice{ID: "1abc", File: f}, errdefs.ErrInvalidArgument),
				add(hypervisor.BlockDevice{ID: strings.Repeat("a", 25), File: f}, errdefs.ErrInvalidArgument),
				add(hypervisor.BlockDevice{ID: "r1", File: f, Serial: "has space"}, errdefs.ErrInvalidArgument),
				add(hypervisor.BlockDevice{ID: "r1", File: f, Serial: strings.Repeat("s", 21)}, errdefs.ErrInvalidArgument),
				add(hypervisor.BlockDevice{ID: "r1", File: f, Format: "qcow2"}, errdefs.ErrInvalidArgument)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 2)
			for _, f := range tc.fail {
				m.fail[f] = true
			}
			v := q35VM(t, m, 2, 0)
			v.unplugWait = 200 * time.Millisecond
			b, err := hypervisor.AsBlockHotplugger(v)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				var err error
				what := "RemoveBlock(" + s.remove + ")"
				if s.add != nil {
					what = "AddBlock(" + s.add.ID + ")"
					err = b.AddBlock(context.Background(), *s.add)
				} else {
					err = b.RemoveBlock(context.Background(), s.remove)
				}
				if s.class == nil && err != nil || s.class != nil && !errors.Is(err, s.class) {
					t.Errorf("%s #%d: got %v, want class %v", what, i, err, s.class)
				}
			}
			got := m.qmpLog()
			if got != tc.log {
				t.Errorf("qmp log:\n%s\nwant\n%s", got, tc.log)
			}
		})
	}
}

func TestBlockHotplugUnsupported(t *testing.T) {
	f := tempDisk(t)
	tests := []struct {
		name    string
		machine string
		state   state
		class   error
	}{
		{"microvm", MachineMicroVM, stateRunning, errdefs.ErrNotImplemented},
		{"not started", MachineQ35, stateCreated, errdefs.ErrFailedPrecondition},
		{"exited", MachineQ35, stateExited, hypervisor.ErrVMExited},
		{"no port reserved", MachineQ35, stateRunning, errdefs.ErrResourceExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := vmIn(t, baseConfig(), tc.machine, tc.state)
			err := v.AddBlock(context.Background(), hypervisor.BlockDevice{ID: "r1", File: f})
			if !errors.Is(err, tc.class) {
				t.Errorf("got %v, want class %v", err, tc.class)
			}
		})
	}
	t.Run("microvm refuses reserved disk slots", func(t *testing.T) {
		cfg := baseConfig()
		cfg.HotplugBlocks = 1
		if _, err := New(cfg, Options{Machine: MachineMicroVM, Accel: AccelTCG, TSCKHz: 1}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("got %v, want class %v", err, errdefs.ErrInvalidArgument)
		}
	})
}

// TestBlockHotplugLostAnswer: a caller that gives up while QEMU is still
// answering add-fd leaves QEMU holding the descriptor in an fd set the
// driver never learnt the number of; the rollback must still remove it.
func TestBlockHotplugLostAnswer(t *testing.T) {
	f := tempDisk(t)
	m := newFakeMachine(2, 2)
	m.delay["add-fd"] = 300 * time.Millisecond
	v := q35VM(t, m, 1, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f, Serial: "s-r1"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want class %v", err, context.DeadlineExceeded)
	}
	// The fake answers in order: once it answered this, it has handled
	// the late add-fd too.
	syncQMP(v)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.open) != 0 {
		t.Errorf("fd sets left open in QEMU after the failed add: %v; qmp log:\n%s", m.open, strings.Join(m.log, "\n"))
	}
}

// TestBlockHotplugLostDeviceAdd: a caller that gives up while QEMU is
// still answering device_add leaves a device QEMU may have plugged; the
// rollback unplugs it before it deletes the node, so that neither the
// device nor the node (and the image descriptor it holds) stays.
func TestBlockHotplugLostDeviceAdd(t *testing.T) {
	f := tempDisk(t)
	m := newFakeMachine(2, 2)
	m.delay["device_add"] = 300 * time.Millisecond
	v := q35VM(t, m, 1, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f, Serial: "s-r1"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want class %v", err, context.DeadlineExceeded)
	}
	syncQMP(v)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.devices) != 0 || len(m.open) != 0 {
		t.Errorf("after the failed add QEMU still has devices %v and fd sets %v; qmp log:\n%s", m.devices, m.open, strings.Join(m.log, "\n"))
	}
}
