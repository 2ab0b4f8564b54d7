package qemu

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// TestLateReleaseStale: a late DEVICE_DELETED starts a release that waits
// for the table's mutex. Meanwhile an add of another NIC finds the device
// gone (settle) and takes its port, is removed, and the first NIC's ID is
// added again into the port, and the guest keeps that one past its unplug
// bound. The stale release must not free the port (QEMU still has the new
// device in it) nor delete the new device's netdev: QEMU lets a netdev go
// under a NIC that uses it.
func TestLateReleaseStale(t *testing.T) {
	m := newFakeMachine(2, 2)
	m.fail["DEVICE_DELETED"] = true
	cfg := baseConfig()
	cfg.HotplugNICs = 1
	v := runningVM(t, cfg, MachineQ35, m)
	v.unplugWait = 50 * time.Millisecond
	ctx := context.Background()
	nic := func(id string) hypervisor.NetworkDevice {
		return hypervisor.NetworkDevice{ID: id, FDs: []uintptr{os.Stdin.Fd()}}
	}
	if err := v.AddNetwork(ctx, nic("n1")); err != nil {
		t.Fatal(err)
	}
	v.nicMu.Lock()
	if err := v.hotRemove(ctx, v.qmp, &v.nicPorts, "n1"); err == nil {
		v.nicMu.Unlock()
		t.Fatal("the guest keeps n1, yet its unplug succeeded")
	}
	// Hold the table as a concurrent caller would, then deliver the late
	// event: its release waits for the mutex.
	m.letGo(nicDevPrefix+"n1", true)
	_, _ = v.qmp.execute(ctx, "query-status", nil)
	// The fake sends the event after that answer; the reader has handled
	// it once the next answer is in, as with QEMU, whose events precede
	// later answers.
	_, _ = v.qmp.execute(ctx, "query-status", nil)

	plug := func(n hypervisor.NetworkDevice) plugFunc {
		return func(ctx context.Context, port string) (releaseFunc, error) { return v.plugNIC(ctx, v.qmp, n, port) }
	}
	guestKeeps := func(keep bool) {
		m.mu.Lock()
		m.fail["DEVICE_DELETED"] = keep
		m.mu.Unlock()
	}
	steps := []struct {
		name string
		do   func() error
		ok   bool
	}{
		{"adding n2 into n1's settled port", func() error {
			guestKeeps(false)
			return v.hotAdd(ctx, v.qmp, &v.nicPorts, "n2", nicDevPrefix+"n2", plug(nic("n2")))
		}, true},
		{"removing n2", func() error { return v.hotRemove(ctx, v.qmp, &v.nicPorts, "n2") }, true},
		{"adding n1 again", func() error {
			guestKeeps(true)
			return v.hotAdd(ctx, v.qmp, &v.nicPorts, "n1", nicDevPrefix+"n1", plug(nic("n1")))
		}, true},
		{"removing the kept n1", func() error { return v.hotRemove(ctx, v.qmp, &v.nicPorts, "n1") }, false},
	}
	for _, s := range steps {
		if err := s.do(); (err == nil) != s.ok {
			v.nicMu.Unlock()
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	m.mu.Lock()
	m.log = nil
	m.mu.Unlock()
	v.nicMu.Unlock()
	v.late.Wait()

	v.nicMu.Lock()
	i := v.nicPorts.find("n1")
	v.nicMu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if !slices.Contains(m.devices, nicDevPrefix+"n1") {
		t.Fatal("test broken: the fake no longer has the new n1")
	}
	if i < 0 {
		t.Error("a stale late release freed the port of a device qemu still has")
	}
	if len(m.log) > 0 {
		t.Errorf("a stale late release sent %q", m.log)
	}
}

// TestUnplugWaitEndsWithQEMU: a RemoveBlock waiting for a guest that keeps
// the disk returns once QEMU's monitor is gone (QEMU exited or is being
// stopped), not after the whole unplug bound: no event can come any more,
// and a sandbox's stop must not wait behind it.
func TestUnplugWaitEndsWithQEMU(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	m := newFakeMachine(2, 2)
	m.fail["DEVICE_DELETED"] = true
	cfg := baseConfig()
	cfg.HotplugBlocks = 1
	v := runningVM(t, cfg, MachineQ35, m)
	v.unplugWait = time.Hour
	ctx := context.Background()
	if err := v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- v.RemoveBlock(ctx, "r1") }()
	// Once device_del is in, QEMU goes.
	for {
		m.mu.Lock()
		asked := slices.Contains(m.log, `device_del {"id":"blkdev-r1"}`)
		m.mu.Unlock()
		if asked {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	v.qmp.close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RemoveBlock once QEMU is gone: %v, want nil (the disk went with the vm)", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RemoveBlock still waits for the guest after QEMU's monitor closed")
	}
}
