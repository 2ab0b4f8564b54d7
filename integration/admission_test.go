package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/bootslot"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// TestBootAdmission holds the node's only boot slot from the test, as a
// booting VM of another shim would: a start waits for it, fails within its
// wait bound when it never frees (leaving nothing, testConfig's leak check),
// and boots once it frees, with its agent dial timeout counted from then,
// not from the start's call.
func TestBootAdmission(t *testing.T) {
	c := testConfig(t)
	c.Image.AssetsDir, _ = hullKernelAssets(t)
	c.Agent.Transport = "serial"
	c.Runtime.MaxConcurrentBoots = 1
	gate := launch.BootGate(c)
	if gate.Slots != 1 || gate.Dir != sandbox.BootSlotsDir(c.Runtime.StateDir) {
		t.Fatalf("boot gate %+v, want the state root's one slot", gate)
	}
	hold := func() *bootslot.Slot {
		s, err := gate.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	t.Run("the wait is bounded", func(t *testing.T) {
		held := hold()
		defer func() { _ = held.Release() }()
		c := *c
		c.Runtime.BootWaitTimeout = config.Duration{Duration: 3 * time.Second}
		sc, err := launch.SandboxConfig(&c, "queued")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = sandbox.Start(withTimeout(t, time.Minute), sc)
		took := time.Since(start)
		t.Logf("error after %s: %v", took, err)
		if !errors.Is(err, bootslot.ErrNoSlot) {
			t.Fatalf("start with every slot held: %v, want ErrNoSlot", err)
		}
		if !strings.Contains(err.Error(), "wait for a boot slot") {
			t.Errorf("error does not name the step: %v", err)
		}
		if took < c.Runtime.BootWaitTimeout.Duration || took > c.Runtime.BootWaitTimeout.Duration+10*time.Second {
			t.Errorf("start failed after %s, wait bound %s", took, c.Runtime.BootWaitTimeout.Duration)
		}
	})

	t.Run("the dial timeout counts from the slot", func(t *testing.T) {
		// The slot is held longer than the dial timeout: a dial counted
		// from the start's call would time out before the guest booted.
		c := *c
		c.Agent.DialTimeout = config.Duration{Duration: 20 * time.Second}
		holdFor := c.Agent.DialTimeout.Duration + 5*time.Second
		held := hold()
		released := make(chan struct{})
		go func() {
			defer close(released)
			time.Sleep(holdFor)
			_ = held.Release()
		}()
		defer func() { <-released }()
		start := time.Now()
		sb := startSandbox(t, &c, "admitted")
		took := time.Since(start)
		t.Logf("started after %s (slot held %s)", took, holdFor)
		if took < holdFor {
			t.Errorf("started after %s, while the only slot was held for %s", took, holdFor)
		}
		if err := sb.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		// The start released its slot: it is free at once.
		c.Runtime.BootWaitTimeout = config.Duration{Duration: time.Second}
		<-released
		s, err := launch.BootGate(&c).Acquire(context.Background())
		if err != nil {
			t.Fatalf("the slot is still held after the start: %v", err)
		}
		_ = s.Release()
	})
}
