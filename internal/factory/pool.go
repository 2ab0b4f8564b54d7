package factory

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// ErrEmpty is a claim on a pool with no ready warm shim.
var ErrEmpty = fmt.Errorf("no warm VM ready: %w", errdefs.ErrNotFound)

// Backoff bounds of the refill after warm shims failed in a row.
const (
	minBackoff = time.Second
	maxBackoff = time.Minute
)

// process is a started warm shim as the pool sees it.
type process struct {
	pid int
	// ready receives one value: nil once the shim can be claimed, or why
	// it never will be.
	ready <-chan error
	// exited is closed when the shim exited.
	exited <-chan struct{}
	// release closes the factory's end of the lifeline: a shim not yet
	// claimed stops its VM and exits. It may be called more than once.
	release func()
	// kill kills the shim (its QEMU and virtiofsd die with it): the end
	// of a released shim that did not exit in time.
	kill func()
}

// startFunc starts the warm shim id, with its control socket at socket.
type startFunc func(ctx context.Context, id, socket string) (*process, error)

// cleanupFunc removes what the warm sandbox id left (its VM, virtiofsd,
// cgroup, state directory): the crash cleanup `shim delete` runs.
type cleanupFunc func(ctx context.Context, id string) error

// warm is one warm shim of the pool.
type warm struct {
	id, socket string
	started    time.Time
	p          *process
	// ready and claimed are guarded by the pool's mu.
	ready, claimed bool
}

// Pool keeps Wanted warm shims, refilling it as they are claimed or die.
// It owns the warm sandboxes' state until each is claimed; a shim that
// exits unclaimed (and one claimed that never adopted its sandbox) has its
// state cleaned up by the pool.
type Pool struct {
	wanted      int
	dir         string
	start       startFunc
	cleanup     cleanupFunc
	bootTimeout time.Duration
	// stopWait bounds the wait, at the pool's end, for the released warm
	// shims to stop their VMs; past it they are killed.
	stopWait time.Duration
	// claimGrace is how long after its claim a warm shim may still wait
	// for its claimer; then its lifeline is closed (see Claim).
	claimGrace time.Duration

	// bg is the pool's process-lifetime context, set by Run.
	bg context.Context
	wg sync.WaitGroup

	mu sync.Mutex
	// shims are the warm shims not claimed, by ID; order lists their IDs
	// oldest first. Guarded by mu.
	shims map[string]*warm
	order []string
	// closing is set once Run's context ended; guarded by mu.
	closing bool
	// starting counts the warm shims being started (outside mu), each
	// holding a place in the pool; guarded by mu.
	starting int
	// failures counts the warm shims that failed in a row, and retryAt
	// is when the refill may start another after them; guarded by mu.
	failures int
	retryAt  time.Time
	// Counters, guarded by mu.
	hits, misses, refillErrors uint64
	lastError                  string
}

// newPool makes a pool of wanted warm shims whose control sockets are in
// dir.
func newPool(wanted int, dir string, start startFunc, cleanup cleanupFunc, bootTimeout time.Duration) *Pool {
	return &Pool{
		wanted: wanted, dir: dir, start: start, cleanup: cleanup, bootTimeout: bootTimeout,
		shims: map[string]*warm{}, stopWait: defaultStopWait, claimGrace: defaultClaimGrace,
	}
}

// defaultClaimGrace is the pool's claimGrace: past the longest
// factory.claim_timeout, no claimer is still on its way.
const defaultClaimGrace = time.Minute + 10*time.Second

// defaultStopWait is the pool's stopWait: below the two minutes the
// systemd unit gives the factory to stop.
const defaultStopWait = 90 * time.Second

// Run fills the pool and keeps it full until ctx ends; then it releases
// the warm shims not claimed, waits for them to exit and cleans up after
// them.
func (p *Pool) Run(ctx context.Context) {
	p.mu.Lock()
	p.bg = ctx
	p.mu.Unlock()
	p.fill()
	<-ctx.Done()
	p.mu.Lock()
	p.closing = true
	shims := make([]*warm, 0, len(p.shims))
	for _, w := range p.shims {
		shims = append(shims, w)
	}
	p.mu.Unlock()
	for _, w := range shims {
		w.p.release()
	}
	// Each stops its VM on its own, within stopWait, or is killed; what
	// one left is cleaned up here.
	deadline, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.stopWait)
	defer cancel()
	for _, w := range shims {
		p.awaitExit(w, deadline.Done())
		p.cleanupNow(w.id)
	}
	p.wg.Wait()
}

// awaitExit waits for the released warm shim w to exit, and kills it once
// deadline is closed.
func (p *Pool) awaitExit(w *warm, deadline <-chan struct{}) {
	select {
	case <-w.p.exited:
	case <-deadline:
		select {
		case <-w.p.exited:
		default:
			log.G(p.bg).WithField("warm", w.id).Warn("warm shim did not stop in time: killing it")
			w.p.kill()
			<-w.p.exited
		}
	}
}

// fill starts warm shims until the pool has wanted of them, unless the
// refill backs off after failures (then it tries again when the backoff
// ends). The shims are started outside p.mu (a start forks and execs the
// shim binary): a start in progress holds a place in the pool (starting)
// so that concurrent fills start no more than wanted.
func (p *Pool) fill() {
	for {
		ctx, id, ok := p.reserve()
		if !ok {
			return
		}
		w := &warm{id: id, socket: filepath.Join(p.dir, id+".sock"), started: time.Now()}
		proc, err := p.start(ctx, id, w.socket)
		if !p.add(w, proc, err) {
			return
		}
	}
}

// reserve takes a place in the pool for a warm shim to start, and picks
// its ID; false when the pool is full, closing or backing off. A place
// taken is counted in p.wg until add gives it back.
func (p *Pool) reserve() (context.Context, string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing || p.bg == nil || len(p.shims)+p.starting >= p.wanted {
		return nil, "", false
	}
	if wait := time.Until(p.retryAt); wait > 0 {
		time.AfterFunc(wait, p.fill)
		return nil, "", false
	}
	id, err := sandbox.NewWarmID()
	if err != nil {
		p.failedLocked(err)
		time.AfterFunc(time.Until(p.retryAt), p.fill)
		return nil, "", false
	}
	p.starting++
	p.wg.Add(1) // before Run's Wait: p.closing is not set
	return p.bg, id, true
}

// add puts the warm shim w that start started (proc, or why not: err) in
// the place reserve took, and tells whether the refill goes on. A shim
// started while the pool closed is released at once and cleaned up after,
// as Run does with those in the pool.
func (p *Pool) add(w *warm, proc *process, err error) bool {
	defer p.wg.Done()
	p.mu.Lock()
	p.starting--
	if err != nil {
		p.failedLocked(fmt.Errorf("starting warm shim %s: %w", w.id, err))
		p.cleanupLater(w.id)
		time.AfterFunc(time.Until(p.retryAt), p.fill)
		p.mu.Unlock()
		return false
	}
	w.p = proc
	if p.closing {
		p.mu.Unlock()
		proc.release()
		deadline, cancel := context.WithTimeout(context.WithoutCancel(p.bg), p.stopWait)
		defer cancel()
		p.awaitExit(w, deadline.Done())
		p.cleanupNow(w.id)
		return false
	}
	p.shims[w.id] = w
	p.order = append(p.order, w.id)
	p.mu.Unlock()
	go p.watch(w)
	return true
}

// failedLocked counts a refill error and backs the refill off; p.mu held.
func (p *Pool) failedLocked(err error) {
	p.refillErrors++
	p.lastError = err.Error()
	p.failures++
	backoff := min(minBackoff<<min(p.failures-1, 10), maxBackoff)
	p.retryAt = time.Now().Add(backoff)
	log.G(p.bg).WithError(err).WithField("retry_in", backoff).Warn("warm VM refill failed")
}

// cleanupLater cleans up after the warm sandbox id in the background.
func (p *Pool) cleanupLater(id string) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.cleanupNow(id)
	}()
}

// cleanupNow cleans up after the warm sandbox id.
func (p *Pool) cleanupNow(id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.bg), time.Minute)
	defer cancel()
	if err := p.cleanup(ctx, id); err != nil {
		log.G(ctx).WithError(err).WithField("warm", id).Warn("cleaning up a warm VM")
	}
}

// watch follows w from its start to its exit. Not counted in p.wg: a
// claimed shim lives on after the factory.
func (p *Pool) watch(w *warm) {
	timer := time.NewTimer(p.bootTimeout)
	defer timer.Stop()
	var bootErr error
	select {
	case bootErr = <-w.p.ready:
	case <-timer.C:
		bootErr = fmt.Errorf("not ready after %s", p.bootTimeout)
	case <-w.p.exited:
		bootErr = errors.New("exited before it was ready")
	}
	p.mu.Lock()
	if bootErr == nil {
		w.ready = true
		p.failures = 0
		log.G(p.bg).WithFields(log.Fields{"warm": w.id, "pid": w.p.pid, "took": time.Since(w.started).Round(time.Millisecond)}).Info("warm VM ready")
	} else if !w.claimed {
		p.failedLocked(fmt.Errorf("warm shim %s: %w", w.id, bootErr))
	}
	p.mu.Unlock()
	if bootErr != nil {
		w.p.release()
	}

	<-w.p.exited
	// The factory's end of the lifeline, kept open while the shim lived
	// (closing it sooner would end a claimed shim still in its hand-over).
	w.p.release()
	p.mu.Lock()
	claimed, closing := w.claimed, p.closing
	if !claimed {
		p.removeLocked(w.id)
		if bootErr == nil && !p.closing {
			p.failedLocked(fmt.Errorf("warm shim %s exited unclaimed", w.id))
		}
	}
	p.mu.Unlock()
	// A claimed shim's sandbox is the pod's once it adopted it (and then
	// no longer has the warm ID); what still has the warm ID was never
	// adopted, and is the pool's to clean up. Once the pool closes, Run
	// cleans up after the shims it released.
	if claimed || !closing {
		p.cleanupNow(w.id)
	}
	if !claimed {
		p.fill()
	}
}

// removeLocked takes id out of the pool; p.mu held.
func (p *Pool) removeLocked(id string) {
	delete(p.shims, id)
	for i, o := range p.order {
		if o == id {
			p.order = append(p.order[:i], p.order[i+1:]...)
			break
		}
	}
}

// Claim takes the oldest ready warm shim out of the pool and starts a
// refill. An empty pool is ErrEmpty (a miss).
func (p *Pool) Claim(ctx context.Context, forID string) (id, socket string, err error) {
	p.mu.Lock()
	var w *warm
	for _, o := range p.order {
		if s := p.shims[o]; s.ready {
			w = s
			break
		}
	}
	if w == nil || p.closing {
		p.misses++
		p.mu.Unlock()
		log.G(ctx).WithField("for", forID).Info("claim missed: no warm VM ready")
		return "", "", ErrEmpty
	}
	w.claimed = true
	p.removeLocked(w.id)
	p.hits++
	p.mu.Unlock()
	log.G(ctx).WithFields(log.Fields{"warm": w.id, "for": forID}).Info("warm VM claimed")
	// A claimer whose time ran out before it reached the warm shim never
	// will: past claimGrace, closing the lifeline ends a shim still
	// waiting (it stops its VM and exits). One that was handed its socket
	// closed its own end already, and one in a hand-over runs it to its
	// end whatever the lifeline does.
	time.AfterFunc(p.claimGrace, w.p.release)
	go p.fill()
	return w.id, w.socket, nil
}

// Status describes the pool.
func (p *Pool) Status() *api.StatusResponse {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := &api.StatusResponse{
		Wanted: uint32(p.wanted), Hits: p.hits, Misses: p.misses,
		RefillErrors: p.refillErrors, LastError: p.lastError,
		// Those still being started boot too.
		Booting: uint32(p.starting),
	}
	for _, id := range p.order {
		w := p.shims[id]
		if w.ready {
			r.Ready++
		} else {
			r.Booting++
		}
		r.Vms = append(r.Vms, &api.WarmVM{Id: w.id, Ready: w.ready, AgeSeconds: time.Since(w.started).Seconds(), Pid: uint32(w.p.pid)})
	}
	return r
}
