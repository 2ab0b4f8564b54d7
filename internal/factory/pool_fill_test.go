package factory

import (
	"context"
	"sync"
	"testing"
	"time"
)

// gatedStarter is a fakeStarter whose starts wait at a gate: a start in
// progress, as a slow fork and exec of the shim binary is.
type gatedStarter struct {
	*fakeStarter
	// entered receives the ID of each start that reached the gate.
	entered chan string
	gate    chan struct{}
}

func newGatedStarter() *gatedStarter {
	return &gatedStarter{fakeStarter: newFakeStarter(), entered: make(chan string, 16), gate: make(chan struct{})}
}

func (g *gatedStarter) start(ctx context.Context, id, socket string) (*process, error) {
	g.entered <- id
	<-g.gate
	return g.fakeStarter.start(ctx, id, socket)
}

// waitEntered waits for a start to reach the gate.
func (g *gatedStarter) waitEntered(t *testing.T) string {
	t.Helper()
	select {
	case id := <-g.entered:
		return id
	case <-time.After(5 * time.Second):
		t.Fatal("no warm shim start began")
		return ""
	}
}

// within fails t unless f returns before the time a lock-up is assumed.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s blocked while a warm shim was being started", what)
	}
}

func runGatedPool(t *testing.T, wanted int, g *gatedStarter) (*Pool, context.CancelFunc, chan struct{}) {
	t.Helper()
	// No shim here fails its boot: each stays until the test ends.
	p, cancel, done := runPoolWith(t, wanted, g.start, g.cleanup, time.Minute)
	// Registered after the pool's own cleanup, so run before it: the
	// pool's end waits for a start held at the gate.
	t.Cleanup(func() {
		cancel()
		select {
		case <-g.gate:
		default:
			close(g.gate)
		}
	})
	return p, cancel, done
}

// TestPoolStartsOutsideItsLock checks that the pool starts warm shims
// without holding its lock: claims and status answer meanwhile, concurrent
// refills start no more than wanted, and a shim whose start ends after the
// pool closed is released and cleaned up.
func TestPoolStartsOutsideItsLock(t *testing.T) {
	t.Run("claim and status answer during a start", func(t *testing.T) {
		g := newGatedStarter()
		p, _, _ := runGatedPool(t, 1, g)
		g.waitEntered(t)
		within(t, "Status", func() {
			if st := p.Status(); st.Booting != 1 || st.Ready != 0 {
				t.Errorf("during the start: booting %d ready %d, want 1 0", st.Booting, st.Ready)
			}
		})
		within(t, "Claim", func() { _, _, _ = p.Claim(context.Background(), "c1") })
		close(g.gate)
		f := g.next(t)
		f.ready <- nil
		waitStatus(t, p, "ready", func(r, _ uint32) bool { return r == 1 })
	})
	t.Run("concurrent refills start no more than wanted", func(t *testing.T) {
		g := newGatedStarter()
		p, _, _ := runGatedPool(t, 2, g)
		g.waitEntered(t)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(p.fill)
		}
		g.waitEntered(t)
		close(g.gate)
		wg.Wait()
		for deadline := time.Now().Add(5 * time.Second); len(p.Status().Vms) != 2; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d warm VMs, want 2", len(p.Status().Vms))
			}
		}
		select {
		case id := <-g.entered:
			t.Fatalf("a third warm shim (%s) was started for a pool of 2", id)
		default:
		}
		if st := p.Status(); st.Booting != 2 {
			t.Fatalf("%d warm VMs booting, want 2", st.Booting)
		}
	})
	t.Run("a shim started as the pool closes is released and cleaned up", func(t *testing.T) {
		g := newGatedStarter()
		_, cancel, done := runGatedPool(t, 1, g)
		id := g.waitEntered(t)
		cancel()
		close(g.gate)
		f := g.next(t)
		select {
		case <-f.released:
		case <-time.After(5 * time.Second):
			t.Fatal("the shim started after the close was not released")
		}
		g.waitCleaned(t, id)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return")
		}
	})
}
