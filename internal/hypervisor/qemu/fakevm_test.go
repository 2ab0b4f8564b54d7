package qemu

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// The hotplug tests' running VM on a fake QEMU (fakeMachine) and what
// they read of it.

// q35VM is a running q35 VM of baseConfig on the fake machine m, with
// blocks disk ports and nics NIC ports reserved.
func q35VM(t *testing.T, m *fakeMachine, blocks, nics uint32) *VM {
	t.Helper()
	cfg := baseConfig()
	cfg.HotplugBlocks, cfg.HotplugNICs = blocks, nics
	return runningVM(t, cfg, MachineQ35, m)
}

// vmIn is a VM of cfg on machine that was never started, with its state
// set to st: for the checks a call makes before it reaches QEMU.
func vmIn(t *testing.T, cfg hypervisor.Config, machine string, st state) *VM {
	t.Helper()
	v, err := New(cfg, Options{Machine: machine, Accel: AccelTCG, TSCKHz: 1})
	if err != nil {
		t.Fatal(err)
	}
	v.state = st
	return v
}

// tempDisk is an empty image file to hot-add, closed at the test's end.
func tempDisk(t *testing.T) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// qmpLog is the QMP commands m received, one per line.
func (m *fakeMachine) qmpLog() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.log, "\n")
}

// syncQMP sends v's QMP a command the fake does not know and ignores the
// error: the fake answers in order and sends its queued events after its
// next answer, so once this returns it has handled every command sent
// before, late ones included, and sent its events.
func syncQMP(v *VM) {
	_, _ = v.qmp.execute(context.Background(), "query-status", nil)
}
