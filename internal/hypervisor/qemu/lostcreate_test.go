package qemu

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// TestHotAddLostBackend: the answer to the command that makes a device's
// backend (a disk's block node, a NIC's tap netdev) is lost to the
// caller's deadline, though QEMU made it. The rollback still deletes it:
// it holds QEMU's copy of the image's or the taps' descriptors.
func TestHotAddLostBackend(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	tests := []struct {
		name, cmd string
		add       func(ctx context.Context, v *VM) error
		// deleted is the command that must follow the lost one.
		deleted string
	}{
		{"disk", "blockdev-add", func(ctx context.Context, v *VM) error {
			return v.AddBlock(ctx, hypervisor.BlockDevice{ID: "r1", File: f})
		}, `blockdev-del {"node-name":"blk-r1"}`},
		{"nic", "netdev_add", func(ctx context.Context, v *VM) error {
			return v.AddNetwork(ctx, hypervisor.NetworkDevice{ID: "eth0", FDs: []uintptr{f.Fd()}})
		}, `netdev_del {"id":"net-eth0"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 2)
			m.delay[tc.cmd] = 300 * time.Millisecond
			cfg := baseConfig()
			cfg.HotplugBlocks, cfg.HotplugNICs = 1, 1
			v := runningVM(t, cfg, MachineQ35, m)
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if err := tc.add(ctx, v); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("add: got %v, want class %v", err, context.DeadlineExceeded)
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			i := slices.IndexFunc(m.log, func(l string) bool { return len(l) >= len(tc.cmd) && l[:len(tc.cmd)] == tc.cmd })
			if i < 0 || !slices.Contains(m.log[i+1:], tc.deleted) {
				t.Errorf("qmp log %q: want %q after the lost %s", m.log, tc.deleted, tc.cmd)
			}
			if len(m.nodes) != 0 || len(m.open) != 0 {
				t.Errorf("qemu still has nodes %v and fd sets %v", m.nodes, m.open)
			}
		})
	}
}
