package sandbox

import (
	"time"

	"github.com/containerd/log"
)

// Bounds on the events the guest originates.
const (
	// oomWindow is the period of the OOM rate limits.
	oomWindow = time.Second
	// oomPerContainer is how many OOM events of one container are
	// delivered per oomWindow; the guest kernel reports one per kill,
	// and more than a few a second tell the host nothing new.
	oomPerContainer = 3
	// oomPerLoop is how many WaitOOM answers the OOM loop takes per
	// oomWindow, whatever they name.
	oomPerLoop = 20
	// dropLogInterval is the least time between two logs of dropped
	// guest events.
	dropLogInterval = 10 * time.Second
)

// window is a fixed-window rate limit: at most n events per period.
type window struct {
	n      int
	period time.Duration
	// start is when the current period began; count the events in it.
	start time.Time
	count int
}

// allow counts an event at now and reports whether it is within the limit.
func (w *window) allow(now time.Time) bool {
	if now.Sub(w.start) >= w.period || now.Before(w.start) {
		w.start, w.count = now, 0
	}
	if w.count >= w.n {
		return false
	}
	w.count++
	return true
}

// wait counts an event at now and returns how long to wait before it is
// within the limit (zero when it is).
func (w *window) wait(now time.Time) time.Duration {
	if w.allow(now) {
		return 0
	}
	d := w.period - now.Sub(w.start)
	w.start, w.count = w.start.Add(w.period), 1
	return d
}

// oomFilter admits the OOM events that name a live container of the
// sandbox, within each container's rate limit, and counts the others.
// It is used by the OOM loop alone.
type oomFilter struct {
	// owned returns the live container of an ID, nil for any other.
	owned  func(id string) *Container
	logger *log.Entry

	// unknown and limited count the events dropped since the last log;
	// logged is when that was.
	unknown, limited int
	logged           time.Time
}

// admit reports whether the event naming id is delivered.
func (f *oomFilter) admit(id string, now time.Time) bool {
	c := f.owned(id)
	switch {
	case c == nil:
		f.unknown++
	case !c.allowOOM(now):
		f.limited++
	default:
		return true
	}
	if now.Sub(f.logged) >= dropLogInterval {
		f.logger.WithField("unknown_container", f.unknown).WithField("over_rate", f.limited).
			Warn("dropped OOM events from the guest: naming no container of this sandbox, or over the rate limit")
		f.unknown, f.limited, f.logged = 0, 0, now
	}
	return false
}

// liveContainer returns the container of id when it is created and not
// deleted, nil otherwise.
func (s *Sandbox) liveContainer(id string) *Container {
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c == nil || c.State() == ContainerDeleted {
		return nil
	}
	return c
}

// allowOOM counts an OOM event of the container against its rate limit.
func (c *Container) allowOOM(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.oomRate.n == 0 {
		c.oomRate = window{n: oomPerContainer, period: oomWindow}
	}
	return c.oomRate.allow(now)
}
