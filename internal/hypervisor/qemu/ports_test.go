package qemu

import (
	"context"
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// waitPortFree waits, at most 5 s, until no port of p holds id.
func waitPortFree(t *testing.T, mu interface {
	Lock()
	Unlock()
}, p *hotPorts, id string) bool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		i := p.find(id)
		mu.Unlock()
		if i < 0 {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// TestBlockHotplugLateRelease: a guest that keeps a disk past the unplug
// bound holds its port until QEMU shows the device gone; then the node and
// the image's descriptor are dropped and the port is offered again, and
// never before.
func TestBlockHotplugLateRelease(t *testing.T) {
	f := tempDisk(t)
	disk := func(id string) hypervisor.BlockDevice {
		return hypervisor.BlockDevice{ID: id, File: f, Serial: "s-" + id}
	}
	tests := []struct {
		name string
		// letGo: the guest releases r1 after RemoveBlock gave up; event:
		// QEMU's DEVICE_DELETED reaches the driver.
		letGo, event bool
		// addClass is the class of the AddBlock of r3 that needs r1's
		// port.
		addClass error
		// r1Held: QEMU still holds r1's node and descriptor at the end.
		r1Held bool
		// tail is the QMP log after r1's device_del.
		tail string
	}{
		{
			name:  "late DEVICE_DELETED frees the port and drops the image",
			letGo: true, event: true,
			tail: `blockdev-del {"node-name":"blk-r1"}
remove-fd {"fdset-id":1}
add-fd {"fdset-id":3}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/3","read-only":false},"node-name":"blk-r3","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r3","driver":"virtio-blk-pci","id":"blkdev-r3","serial":"s-r3"}`,
		},
		{
			name:  "event lost: the next add finds the device gone in qemu's tree",
			letGo: true,
			tail: `qom-list {"path":"/machine/peripheral"}
blockdev-del {"node-name":"blk-r1"}
remove-fd {"fdset-id":1}
add-fd {"fdset-id":3}
blockdev-add {"driver":"raw","file":{"driver":"file","filename":"/dev/fdset/3","read-only":false},"node-name":"blk-r3","read-only":false}
device_add {"bus":"blkport0","drive":"blk-r3","driver":"virtio-blk-pci","id":"blkdev-r3","serial":"s-r3"}`,
		},
		{
			name:     "kept for good: the port is not reused while the device exists",
			addClass: errdefs.ErrResourceExhausted,
			r1Held:   true,
			tail:     `qom-list {"path":"/machine/peripheral"}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 2)
			m.fail["DEVICE_DELETED"] = true
			v := q35VM(t, m, 2, 0)
			v.unplugWait = 100 * time.Millisecond
			ctx := context.Background()
			for _, id := range []string{"r1", "r2"} {
				if err := v.AddBlock(ctx, disk(id)); err != nil {
					t.Fatalf("AddBlock(%s): %v", id, err)
				}
			}
			start := time.Now()
			if err := v.RemoveBlock(ctx, "r1"); err != nil {
				t.Fatalf("RemoveBlock(r1) of a disk the guest keeps: %v, want nil after the bound", err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("RemoveBlock took %s with a 100ms unplug bound", took)
			}
			m.mu.Lock()
			m.log = nil
			m.mu.Unlock()
			if tc.letGo {
				m.letGo("blkdev-r1", tc.event)
				// The fake sends queued events after its next answer.
				if _, err := v.qmp.execute(ctx, "query-status", nil); err == nil {
					t.Fatal("query-status: the fake knows no such command")
				}
				if tc.event && !waitPortFree(t, &v.blkMu, &v.blkPorts, "r1") {
					t.Fatal("the late DEVICE_DELETED did not free r1's port")
				}
			}
			if err := v.AddBlock(ctx, disk("r3")); tc.addClass == nil && err != nil || tc.addClass != nil && !errors.Is(err, tc.addClass) {
				t.Errorf("AddBlock(r3): got %v, want class %v", err, tc.addClass)
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			got := strings.Join(slices.DeleteFunc(m.log, func(l string) bool { return strings.HasPrefix(l, "query-status") }), "\n")
			if got != tc.tail {
				t.Errorf("qmp log after the unplug:\n%s\nwant\n%s", got, tc.tail)
			}
			held := m.open[1] && m.nodes["blk-r1"]
			if held != tc.r1Held {
				t.Errorf("qemu holds r1's descriptor and node: %v, want %v (fd sets %v, nodes %v)", held, tc.r1Held, m.open, m.nodes)
			}
		})
	}
}

// TestBlockHotplugStrayEvent: a DEVICE_DELETED the driver did not ask for
// (an unknown device, or the disk in use) frees no port. Three guards
// hold it: deviceDeleted acts only on devices whose unplug it stopped
// waiting for, releaseLate only on ports that wait, and QEMU refuses to
// delete the node of a device it still has.
func TestBlockHotplugStrayEvent(t *testing.T) {
	f := tempDisk(t)
	m := newFakeMachine(2, 2)
	v := q35VM(t, m, 1, 0)
	ctx := context.Background()
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f}); err != nil {
		t.Fatal(err)
	}
	// The guest cannot make QEMU report a device it did not unplug; a
	// stray event (for the disk in use, or an unknown one) must not free
	// its port.
	m.letGo("blkdev-nope", true)
	m.mu.Lock()
	m.events = append(m.events, `{"event":"DEVICE_DELETED","data":{"device":"blkdev-r1","path":"/machine/peripheral/blkdev-r1"}}`)
	m.mu.Unlock()
	syncQMP(v)
	time.Sleep(100 * time.Millisecond)
	v.blkMu.Lock()
	i := v.blkPorts.find("r1")
	v.blkMu.Unlock()
	if i < 0 {
		t.Fatal("a DEVICE_DELETED nobody waited for freed the port of a disk in use")
	}
}

// TestAddNetworksBudget: more NICs than free ports fail before anything
// reaches QEMU; a NIC that fails after others were added has them
// unplugged again; a guest that keeps one holds its port until it lets go.
func TestAddNetworksBudget(t *testing.T) {
	nic := func(id string) hypervisor.NetworkDevice {
		return hypervisor.NetworkDevice{ID: id, FDs: []uintptr{uintptr(os.Stdin.Fd())}}
	}
	tests := []struct {
		name  string
		slots uint32
		fail  []string
		nics  []string
		class error
		log   string
		// kept are the NICs whose ports stay taken after the call.
		kept []string
	}{
		{
			name: "over budget: refused before any qmp", slots: 2,
			nics: []string{"eth0", "eth1", "eth2"}, class: errdefs.ErrResourceExhausted,
		},
		{
			name: "the same id twice: refused before any qmp", slots: 2,
			nics: []string{"eth0", "eth0"}, class: errdefs.ErrInvalidArgument,
		},
		{
			name: "second refused: the first is unplugged again", slots: 2,
			fail: []string{"device_add nic-eth1"}, nics: []string{"eth0", "eth1"}, class: errdefs.ErrUnknown,
			log: `getfd {"fdname":"tapfd1"}
netdev_add {"fd":"tapfd1","id":"net-eth0","type":"tap"}
device_add {"bus":"nicport0","driver":"virtio-net-pci","id":"nic-eth0","netdev":"net-eth0"}
getfd {"fdname":"tapfd2"}
netdev_add {"fd":"tapfd2","id":"net-eth1","type":"tap"}
device_add {"bus":"nicport1","driver":"virtio-net-pci","id":"nic-eth1","netdev":"net-eth1"}
netdev_del {"id":"net-eth1"}
closefd {"fdname":"tapfd2"}
device_del {"id":"nic-eth0"}
netdev_del {"id":"net-eth0"}`,
		},
		{
			name: "second refused, the guest keeps the first: its port stays taken", slots: 2,
			fail: []string{"device_add nic-eth1", "DEVICE_DELETED"}, nics: []string{"eth0", "eth1"}, class: errNotReleased,
			log: `getfd {"fdname":"tapfd1"}
netdev_add {"fd":"tapfd1","id":"net-eth0","type":"tap"}
device_add {"bus":"nicport0","driver":"virtio-net-pci","id":"nic-eth0","netdev":"net-eth0"}
getfd {"fdname":"tapfd2"}
netdev_add {"fd":"tapfd2","id":"net-eth1","type":"tap"}
device_add {"bus":"nicport1","driver":"virtio-net-pci","id":"nic-eth1","netdev":"net-eth1"}
netdev_del {"id":"net-eth1"}
closefd {"fdname":"tapfd2"}
device_del {"id":"nic-eth0"}`,
			kept: []string{"eth0"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 2)
			for _, f := range tc.fail {
				m.fail[f] = true
			}
			v := q35VM(t, m, 0, tc.slots)
			v.unplugWait = 100 * time.Millisecond
			var ns []hypervisor.NetworkDevice
			for _, id := range tc.nics {
				ns = append(ns, nic(id))
			}
			err := v.AddNetworks(context.Background(), ns)
			if !errors.Is(err, tc.class) {
				t.Errorf("AddNetworks: got %v, want class %v", err, tc.class)
			}
			got := m.qmpLog()
			if got != tc.log {
				t.Errorf("qmp log:\n%s\nwant\n%s", got, tc.log)
			}
			v.nicMu.Lock()
			var kept []string
			for _, s := range v.nicPorts.slots {
				if s.state != slotFree {
					kept = append(kept, s.id)
				}
			}
			v.nicMu.Unlock()
			if !slices.Equal(kept, tc.kept) {
				t.Errorf("ports taken after the call: %v, want %v", kept, tc.kept)
			}
			if len(tc.kept) == 0 {
				return
			}
			// The guest lets go late: the port is free again and the
			// netdev deleted.
			m.letGo("nic-"+tc.kept[0], true)
			syncQMP(v)
			if !waitPortFree(t, &v.nicMu, &v.nicPorts, tc.kept[0]) {
				t.Fatal("the late DEVICE_DELETED did not free the NIC's port")
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			if last := m.log[len(m.log)-1]; last != `netdev_del {"id":"net-`+tc.kept[0]+`"}` {
				t.Errorf("last qmp command %q, want the netdev deleted", last)
			}
		})
	}
}

// TestBlockHotplugLostAddKept: a device_add whose answer is lost, for a
// device the guest then keeps: the rollback cannot unplug it, so its port
// waits (it is not offered to the next disk) until QEMU reports the device
// gone, and then the node goes too.
func TestBlockHotplugLostAddKept(t *testing.T) {
	f := tempDisk(t)
	m := newFakeMachine(2, 2)
	m.delay["device_add"] = 300 * time.Millisecond
	m.fail["DEVICE_DELETED"] = true
	v := q35VM(t, m, 1, 0)
	v.unplugWait = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AddBlock: got %v, want class %v", err, context.DeadlineExceeded)
	}
	m.mu.Lock()
	m.delay["device_add"] = 0
	m.mu.Unlock()
	if err := v.AddBlock(context.Background(), hypervisor.BlockDevice{ID: "r2", File: f}); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("AddBlock into the port of a device that may be there: got %v, want class %v", err, errdefs.ErrResourceExhausted)
	}
	m.letGo("blkdev-r1", true)
	syncQMP(v)
	if !waitPortFree(t, &v.blkMu, &v.blkPorts, "r1") {
		t.Fatal("the late DEVICE_DELETED did not free the port of the lost add")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.nodes) != 0 || len(m.open) != 0 {
		t.Errorf("after the device went qemu still has nodes %v and fd sets %v", m.nodes, m.open)
	}
}

// TestBlockRemoveTogether: the disks of one removal are unplugged
// together: every device_del goes out before the driver waits, and one
// wait, bounded once by the unplug wait, covers them all. A disk the
// guest releases is dropped right away; one it keeps holds its port until
// its own late DEVICE_DELETED.
func TestBlockRemoveTogether(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	ids := []string{"r4", "r3", "r2", "r1"}
	tests := []struct {
		name string
		// keep are the disks the guest does not release.
		keep []string
		// log is the QMP log of the removal.
		log string
	}{
		{
			name: "the guest keeps one: the others are dropped",
			keep: []string{"r2"},
			log: `device_del {"id":"blkdev-r4"}
device_del {"id":"blkdev-r3"}
device_del {"id":"blkdev-r2"}
device_del {"id":"blkdev-r1"}
blockdev-del {"node-name":"blk-r4"}
remove-fd {"fdset-id":4}
blockdev-del {"node-name":"blk-r3"}
remove-fd {"fdset-id":3}
blockdev-del {"node-name":"blk-r1"}
remove-fd {"fdset-id":1}`,
		},
		{
			name: "the guest keeps all: one wait for them all",
			keep: ids,
			log: `device_del {"id":"blkdev-r4"}
device_del {"id":"blkdev-r3"}
device_del {"id":"blkdev-r2"}
device_del {"id":"blkdev-r1"}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 2)
			for _, id := range tc.keep {
				m.fail["DEVICE_DELETED "+blockDevPrefix+id] = true
			}
			cfg := baseConfig()
			cfg.HotplugBlocks = uint32(len(ids))
			v := runningVM(t, cfg, MachineQ35, m)
			const wait = time.Second
			v.unplugWait = wait
			ctx := context.Background()
			for _, id := range slices.Backward(ids) {
				if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: id, File: f}); err != nil {
					t.Fatalf("AddBlock(%s): %v", id, err)
				}
			}
			m.mu.Lock()
			m.log = nil
			m.mu.Unlock()
			start := time.Now()
			if err := v.RemoveBlock(ctx, ids...); err != nil {
				t.Fatalf("RemoveBlock: %v, want nil (kept disks are logged)", err)
			}
			// One wait at most: a wait per kept disk in turn takes at
			// least the unplug wait each.
			if took := time.Since(start); len(tc.keep) > 1 && took >= time.Duration(len(tc.keep))*wait {
				t.Errorf("RemoveBlock of %d kept disks took %s: a wait of %s per disk, not one for all", len(tc.keep), took, wait)
			}
			m.mu.Lock()
			got := strings.Join(m.log, "\n")
			m.mu.Unlock()
			if got != tc.log {
				t.Errorf("qmp log:\n%s\nwant\n%s", got, tc.log)
			}
			v.blkMu.Lock()
			var taken []string
			for _, s := range v.blkPorts.slots {
				if s.state != slotFree {
					taken = append(taken, s.id)
					if s.state != slotUnplugging {
						t.Errorf("port of %s is %s, want %s", s.id, s.state, slotUnplugging)
					}
				}
			}
			v.blkMu.Unlock()
			slices.Sort(taken)
			keep := slices.Sorted(slices.Values(tc.keep))
			if !slices.Equal(taken, keep) {
				t.Errorf("ports taken: %v, want those of the kept disks %v", taken, keep)
			}
			// Each kept disk's late event frees its own port.
			for _, id := range tc.keep {
				m.letGo(blockDevPrefix+id, true)
			}
			_, _ = v.qmp.execute(ctx, "query-status", nil)
			for _, id := range tc.keep {
				if !waitPortFree(t, &v.blkMu, &v.blkPorts, id) {
					t.Errorf("the late DEVICE_DELETED of %s did not free its port", id)
				}
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			if len(m.nodes) != 0 || len(m.open) != 0 {
				t.Errorf("after the guest let go qemu still has nodes %v and fd sets %v", m.nodes, m.open)
			}
		})
	}
}

// TestBlockRemoveLostAnswer: the answer to a disk's device_del is lost
// (the caller's deadline passes while QEMU is busy; QEMU still runs the
// command). The port waits for QEMU to show the device gone, then is
// freed and offered again, without a second remove; never before.
func TestBlockRemoveLostAnswer(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	tests := []struct {
		name string
		// keep: the guest does not release r1 at first; letGo: then it
		// does, event telling whether QEMU's DEVICE_DELETED reaches the
		// driver.
		keep, letGo, event bool
		// addClass is the class of the AddBlock of r2 that needs r1's
		// port.
		addClass error
	}{
		{name: "the guest releases it: its late event frees the port", event: true},
		{name: "released, event lost: the next add finds the device gone", keep: true, letGo: true},
		{name: "kept for good: the port is not reused", keep: true, addClass: errdefs.ErrResourceExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 2)
			m.fail["DEVICE_DELETED"] = tc.keep
			cfg := baseConfig()
			cfg.HotplugBlocks = 1
			v := runningVM(t, cfg, MachineQ35, m)
			v.unplugWait = 100 * time.Millisecond
			ctx := context.Background()
			if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f}); err != nil {
				t.Fatal(err)
			}
			m.mu.Lock()
			m.delay["device_del"] = 300 * time.Millisecond
			m.mu.Unlock()
			dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			err := v.RemoveBlock(dctx, "r1")
			cancel()
			if err != nil {
				t.Fatalf("RemoveBlock whose device_del's answer is lost: %v, want nil (the driver waits for qemu)", err)
			}
			m.mu.Lock()
			m.delay["device_del"] = 0
			m.mu.Unlock()
			// The late answer, and the event after it, come before the
			// answer to the next command.
			_, _ = v.qmp.execute(ctx, "query-status", nil)
			if tc.letGo {
				m.letGo("blkdev-r1", tc.event)
				_, _ = v.qmp.execute(ctx, "query-status", nil)
			}
			if tc.event && !waitPortFree(t, &v.blkMu, &v.blkPorts, "r1") {
				t.Fatal("the DEVICE_DELETED of the unplug whose answer was lost did not free the port")
			}
			if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r2", File: f}); tc.addClass == nil && err != nil || tc.addClass != nil && !errors.Is(err, tc.addClass) {
				t.Errorf("AddBlock(r2) into r1's port: got %v, want class %v", err, tc.addClass)
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			if held := m.nodes["blk-r1"]; held != (tc.addClass != nil) {
				t.Errorf("qemu holds r1's node: %v, want %v (nodes %v)", held, tc.addClass != nil, m.nodes)
			}
		})
	}
}

// TestBlockRemoveNotSent: a remove whose deadline has passed before its
// device_del could go out leaves the disk where it is: QEMU never got the
// command, so the port stays the disk's (it is not taken for a VM gone),
// and a later remove unplugs it.
func TestBlockRemoveNotSent(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	m := newFakeMachine(2, 2)
	cfg := baseConfig()
	cfg.HotplugBlocks = 1
	v := runningVM(t, cfg, MachineQ35, m)
	ctx := context.Background()
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f}); err != nil {
		t.Fatal(err)
	}
	past, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	if err := v.RemoveBlock(past, "r1"); err == nil || hypervisor.IsExited(err) {
		t.Errorf("RemoveBlock past its deadline: got %v, want an error that is not the vm's exit", err)
	}
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r2", File: f}); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("AddBlock into the port of a disk still there: got %v, want class %v", err, errdefs.ErrResourceExhausted)
	}
	if err := v.RemoveBlock(ctx, "r1"); err != nil {
		t.Fatalf("RemoveBlock again: %v", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.devices) != 0 || len(m.nodes) != 0 || len(m.open) != 0 {
		t.Errorf("after the second remove qemu still has devices %v, nodes %v, fd sets %v", m.devices, m.nodes, m.open)
	}
}

// TestBlockRemoveReleaseAfterWait: the disks the guest releases are
// released in QEMU (node, fd set) and their ports freed even when the
// caller's ctx ends during the shared wait for a disk the guest keeps; a
// disk that is gone but whose release fails leaves its port to settle,
// which releases it when a later AddBlock needs the port.
func TestBlockRemoveReleaseAfterWait(t *testing.T) {
	ids := []string{"r1", "r2", "r3"}
	tests := []struct {
		name string
		// ctxTimeout bounds the RemoveBlock; 0 for none.
		ctxTimeout time.Duration
		// failRelease makes every blockdev-del fail during the remove.
		failRelease bool
	}{
		{name: "ctx ends in the wait for a kept disk", ctxTimeout: 300 * time.Millisecond},
		{name: "the release of the gone disks fails", failRelease: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := tempDisk(t)
			m := newFakeMachine(2, 2)
			m.fail["DEVICE_DELETED "+blockDevPrefix+"r2"] = true
			v := q35VM(t, m, uint32(len(ids)), 0)
			v.unplugWait = 2 * time.Second
			if tc.failRelease {
				v.unplugWait = 100 * time.Millisecond
			}
			ctx := context.Background()
			for _, id := range ids {
				if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: id, File: f}); err != nil {
					t.Fatalf("AddBlock(%s): %v", id, err)
				}
			}
			rctx := ctx
			if tc.ctxTimeout > 0 {
				var cancel context.CancelFunc
				rctx, cancel = context.WithTimeout(ctx, tc.ctxTimeout)
				defer cancel()
			}
			m.mu.Lock()
			m.fail["blockdev-del"] = tc.failRelease
			m.mu.Unlock()
			err := v.RemoveBlock(rctx, ids...)
			if tc.failRelease != (err != nil) {
				t.Errorf("RemoveBlock: got %v, want an error: %v", err, tc.failRelease)
			}
			v.blkMu.Lock()
			for _, s := range v.blkPorts.slots {
				if s.state == slotUsed {
					t.Errorf("port of %s is %s after its remove: no one frees it before the vm stops", s.id, s.state)
				}
			}
			v.blkMu.Unlock()
			m.mu.Lock()
			m.fail["blockdev-del"] = false
			m.mu.Unlock()
			// The ports of r1 and r3 take new disks (settle releases
			// them if the remove could not); r2's stays the guest's.
			for _, id := range []string{"r4", "r5"} {
				if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: id, File: f}); err != nil {
					t.Errorf("AddBlock(%s) after the remove: %v", id, err)
				}
			}
			if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r6", File: f}); !errors.Is(err, errdefs.ErrResourceExhausted) {
				t.Errorf("AddBlock(r6) with the kept disk's port taken: got %v, want class %v", err, errdefs.ErrResourceExhausted)
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			nodes := slices.Sorted(maps.Keys(m.nodes))
			if want := []string{"blk-r2", "blk-r4", "blk-r5"}; !slices.Equal(nodes, want) {
				t.Errorf("qemu's block nodes: %v, want %v", nodes, want)
			}
			if len(m.open) != 3 {
				t.Errorf("qemu's fd sets: %v, want 3 (r2, r4, r5)", m.open)
			}
		})
	}
}

// TestBlockRemoveCanceled: a remove whose ctx is canceled (no deadline,
// so no write deadline stops a command) sends no device_del: the disks
// stay plugged in their ports, and a later remove unplugs them.
func TestBlockRemoveCanceled(t *testing.T) {
	f := tempDisk(t)
	m := newFakeMachine(2, 2)
	v := q35VM(t, m, 2, 0)
	ctx := context.Background()
	for _, id := range []string{"r1", "r2"} {
		if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: id, File: f}); err != nil {
			t.Fatalf("AddBlock(%s): %v", id, err)
		}
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := v.RemoveBlock(canceled, "r1", "r2"); !errors.Is(err, context.Canceled) || hypervisor.IsExited(err) {
		t.Errorf("RemoveBlock with a canceled ctx: got %v, want class %v", err, context.Canceled)
	}
	syncQMP(v)
	if log := m.qmpLog(); strings.Contains(log, "device_del") {
		t.Errorf("device_del sent on a canceled ctx:\n%s", log)
	}
	v.blkMu.Lock()
	for _, s := range v.blkPorts.slots {
		if s.state != slotUsed {
			t.Errorf("port of %q is %s, want %s (the disk is still plugged)", s.id, s.state, slotUsed)
		}
	}
	v.blkMu.Unlock()
	if err := v.RemoveBlock(ctx, "r1", "r2"); err != nil {
		t.Fatalf("RemoveBlock again: %v", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.devices) != 0 || len(m.nodes) != 0 || len(m.open) != 0 {
		t.Errorf("after the second remove qemu still has devices %v, nodes %v, fd sets %v", m.devices, m.nodes, m.open)
	}
}
