package factory

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fakeShim is a warm shim of fakeStarter.
type fakeShim struct {
	id       string
	ready    chan error
	exited   chan struct{}
	released chan struct{}
	once     sync.Once
}

// exit ends the fake shim.
func (f *fakeShim) exit() { f.once.Do(func() { close(f.exited) }) }

// fakeStarter starts fake warm shims: each becomes ready when told, and
// exits when released (as a real one does on its lifeline's end).
type fakeStarter struct {
	mu       sync.Mutex
	shims    []*fakeShim
	failNext int
	// hang makes the shims ignore their release (a warm shim stuck in its
	// VM's stop); only a kill ends them.
	hang    bool
	killed  []string
	started chan *fakeShim
	cleaned chan string
}

func newFakeStarter() *fakeStarter {
	return &fakeStarter{started: make(chan *fakeShim, 16), cleaned: make(chan string, 16)}
}

func (s *fakeStarter) start(_ context.Context, id, _ string) (*process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failNext > 0 {
		s.failNext--
		return nil, errors.New("exec failed")
	}
	f := &fakeShim{id: id, ready: make(chan error, 1), exited: make(chan struct{}), released: make(chan struct{})}
	s.shims = append(s.shims, f)
	s.started <- f
	var relOnce sync.Once
	hang := s.hang
	return &process{pid: 100 + len(s.shims), ready: f.ready, exited: f.exited, release: func() {
		relOnce.Do(func() {
			close(f.released)
			if !hang {
				f.exit()
			}
		})
	}, kill: func() {
		s.mu.Lock()
		s.killed = append(s.killed, id)
		s.mu.Unlock()
		f.exit()
	}}, nil
}

func (s *fakeStarter) cleanup(_ context.Context, id string) error {
	s.cleaned <- id
	return nil
}

// next waits for the next fake shim started.
func (s *fakeStarter) next(t *testing.T) *fakeShim {
	t.Helper()
	select {
	case f := <-s.started:
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("no warm shim started")
		return nil
	}
}

// waitCleaned waits for id's cleanup.
func (s *fakeStarter) waitCleaned(t *testing.T, id string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case got := <-s.cleaned:
			if got == id {
				return
			}
		case <-deadline:
			t.Fatalf("%s not cleaned up", id)
		}
	}
}

// waitStatus polls the pool until cond holds.
func waitStatus(t *testing.T, p *Pool, what string, cond func(ready, booting uint32) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		st := p.Status()
		if cond(st.Ready, st.Booting) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	st := p.Status()
	t.Fatalf("pool never %s: ready %d, booting %d", what, st.Ready, st.Booting)
}

func runPool(t *testing.T, wanted int, s *fakeStarter) (*Pool, context.CancelFunc, chan struct{}) {
	t.Helper()
	return runPoolWith(t, wanted, s.start, s.cleanup, time.Second)
}

// runPoolWith runs a pool of wanted warm shims started by start, each
// given bootTimeout to become ready, until the test ends.
func runPoolWith(t *testing.T, wanted int, start startFunc, cleanup cleanupFunc, bootTimeout time.Duration) (*Pool, context.CancelFunc, chan struct{}) {
	t.Helper()
	p := newPool(wanted, t.TempDir(), start, cleanup, bootTimeout)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return p, cancel, done
}

func TestPool(t *testing.T) {
	t.Run("claim on an empty pool is a miss", func(t *testing.T) {
		s := newFakeStarter()
		p, _, _ := runPool(t, 1, s)
		s.next(t) // booting, not ready
		if _, _, err := p.Claim(context.Background(), "c1"); !errors.Is(err, ErrEmpty) || !errdefs.IsNotFound(err) {
			t.Fatalf("claim = %v, want ErrEmpty (not found)", err)
		}
		if st := p.Status(); st.Misses != 1 || st.Hits != 0 {
			t.Fatalf("hits %d misses %d, want 0 1", st.Hits, st.Misses)
		}
	})
	t.Run("claim takes a ready shim and refills", func(t *testing.T) {
		s := newFakeStarter()
		p, _, _ := runPool(t, 1, s)
		first := s.next(t)
		first.ready <- nil
		waitStatus(t, p, "ready", func(r, _ uint32) bool { return r == 1 })
		id, socket, err := p.Claim(context.Background(), "c1")
		if err != nil {
			t.Fatal(err)
		}
		if id != first.id || socket == "" {
			t.Fatalf("claimed %s at %q, want %s", id, socket, first.id)
		}
		second := s.next(t)
		if second.id == first.id {
			t.Fatal("refill reused the claimed ID")
		}
		if st := p.Status(); st.Hits != 1 || st.Ready != 0 || st.Booting != 1 {
			t.Fatalf("after claim: hits %d ready %d booting %d, want 1 0 1", st.Hits, st.Ready, st.Booting)
		}
		select {
		case <-first.released:
			t.Fatal("the claimed shim's lifeline was closed")
		default:
		}
		second.ready <- nil
		waitStatus(t, p, "refilled", func(r, _ uint32) bool { return r == 1 })
		// Once the claimed shim exits (its pod is gone), the factory's
		// end of its lifeline is closed: one descriptor per claim must not
		// stay open for the factory's life.
		first.exit()
		s.waitCleaned(t, first.id)
		select {
		case <-first.released:
		case <-time.After(5 * time.Second):
			t.Fatal("the lifeline of a claimed shim that exited was never closed")
		}
	})
	t.Run("a shim exiting unclaimed is cleaned up and replaced", func(t *testing.T) {
		s := newFakeStarter()
		p, _, _ := runPool(t, 1, s)
		first := s.next(t)
		first.ready <- nil
		waitStatus(t, p, "ready", func(r, _ uint32) bool { return r == 1 })
		first.exit()
		s.waitCleaned(t, first.id)
		second := s.next(t)
		if second.id == first.id {
			t.Fatal("replacement has the dead shim's ID")
		}
		if st := p.Status(); st.RefillErrors != 1 {
			t.Fatalf("refill errors %d, want 1", st.RefillErrors)
		}
	})
	t.Run("a shim that fails its boot is released and cleaned up", func(t *testing.T) {
		s := newFakeStarter()
		p, _, _ := runPool(t, 1, s)
		first := s.next(t)
		first.ready <- errors.New("qemu failed")
		select {
		case <-first.released:
		case <-time.After(5 * time.Second):
			t.Fatal("failed shim not released")
		}
		s.waitCleaned(t, first.id)
		if st := p.Status(); st.RefillErrors != 1 || st.LastError == "" {
			t.Fatalf("refill errors %d (%q), want 1", st.RefillErrors, st.LastError)
		}
	})
	t.Run("a claimed shim that exits has its unadopted state cleaned up", func(t *testing.T) {
		s := newFakeStarter()
		p, _, _ := runPool(t, 1, s)
		first := s.next(t)
		first.ready <- nil
		waitStatus(t, p, "ready", func(r, _ uint32) bool { return r == 1 })
		if _, _, err := p.Claim(context.Background(), "c1"); err != nil {
			t.Fatal(err)
		}
		first.exit()
		s.waitCleaned(t, first.id)
		if st := p.Status(); st.RefillErrors != 0 {
			t.Fatalf("a claimed shim's exit counted as refill error")
		}
	})
	t.Run("closing releases unclaimed shims, not claimed ones", func(t *testing.T) {
		s := newFakeStarter()
		p, cancel, done := runPool(t, 2, s)
		a, b := s.next(t), s.next(t)
		a.ready <- nil
		b.ready <- nil
		waitStatus(t, p, "ready", func(r, _ uint32) bool { return r == 2 })
		id, _, err := p.Claim(context.Background(), "c1")
		if err != nil {
			t.Fatal(err)
		}
		claimed, other := a, b
		if id == b.id {
			claimed, other = b, a
		}
		refill := s.next(t)
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return")
		}
		for _, f := range []*fakeShim{other, refill} {
			select {
			case <-f.released:
			default:
				t.Fatalf("unclaimed %s not released", f.id)
			}
		}
		select {
		case <-claimed.released:
			t.Fatal("claimed shim released at close")
		default:
		}
	})
	t.Run("start errors back off and count", func(t *testing.T) {
		s := newFakeStarter()
		s.failNext = 1
		p, _, _ := runPool(t, 1, s)
		f := s.next(t) // after the backoff
		if st := p.Status(); st.RefillErrors != 1 {
			t.Fatalf("refill errors %d, want 1", st.RefillErrors)
		}
		f.ready <- nil
		waitStatus(t, p, "ready", func(r, _ uint32) bool { return r == 1 })
	})
}

// TestPoolReleasesAnUnusedClaim checks that a warm shim claimed by a
// claimer that never reached it (its time ran out between the factory's
// answer and its dial, or it died) does not keep its VM for the factory's
// life: past the longest claim, the factory closes its lifeline, which
// ends a warm shim still waiting (one in a hand-over runs it to its end).
func TestPoolReleasesAnUnusedClaim(t *testing.T) {
	s := newFakeStarter()
	p := newPool(1, t.TempDir(), s.start, s.cleanup, time.Second)
	p.claimGrace = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	defer func() { cancel(); <-done }()
	f := s.next(t)
	f.ready <- nil
	waitStatus(t, p, "ready", func(ready, _ uint32) bool { return ready == 1 })
	if _, _, err := p.Claim(context.Background(), "c1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.released:
	case <-time.After(5 * time.Second):
		t.Fatal("a claimed shim that was never handed a socket kept its lifeline: its VM leaks for the factory's life")
	}
	s.waitCleaned(t, f.id)
}

// TestPoolStopIsBounded checks that the pool's end does not wait forever
// for a released warm shim that does not exit: past stopWait it is killed
// (its QEMU and virtiofsd die with it) and cleaned up.
func TestPoolStopIsBounded(t *testing.T) {
	s := newFakeStarter()
	s.hang = true
	p := newPool(1, t.TempDir(), s.start, s.cleanup, time.Second)
	p.stopWait = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	f := s.next(t)
	f.ready <- nil
	waitStatus(t, p, "ready", func(ready, _ uint32) bool { return ready == 1 })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		f.exit()
		<-done
		t.Fatal("the pool's end waited for a warm shim that ignored its release")
	}
	s.mu.Lock()
	killed := slices.Clone(s.killed)
	s.mu.Unlock()
	if !slices.Equal(killed, []string{f.id}) {
		t.Fatalf("killed %v, want [%s]", killed, f.id)
	}
	s.waitCleaned(t, f.id)
}

func TestStatusLists(t *testing.T) {
	s := newFakeStarter()
	p, _, _ := runPool(t, 3, s)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, s.next(t).id)
	}
	st := p.Status()
	var got []string
	for _, v := range st.Vms {
		got = append(got, v.Id)
	}
	if st.Wanted != 3 || st.Booting != 3 || !slices.Equal(got, ids) {
		t.Fatalf("status %+v, want 3 booting %v", st, ids)
	}
}
