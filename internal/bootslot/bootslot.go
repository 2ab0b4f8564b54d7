// Package bootslot bounds how many VMs boot at once on a node.
//
// Every pod has a shim of its own, so the bound cannot live in one process:
// it lives in the file system. A Gate is a directory of N slot files (0 to
// N-1); a boot holds one slot with an exclusive flock(2) from the moment its
// VM is started until its sandbox runs or its start failed. A start that
// finds every slot taken polls again, at random intervals of about a tenth
// of a second, until one frees or its wait bound passes. The kernel drops a
// lock with the last descriptor of its open file, so a shim killed with
// SIGKILL frees its slot at once and leaves nothing to clean up; the slot
// files are opened close-on-exec, so the VMM and virtiofsd never hold one.
//
// Waiting is not first come, first served: every poll is a fresh try, so
// under a long stream of starts a waiter may be passed over; the wait
// bound makes such a start fail with an error that says so.
package bootslot

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// ErrNoSlot is the class of the error a start gets when no slot freed
// within its wait bound.
var ErrNoSlot = fmt.Errorf("no boot slot free: %w", errdefs.ErrUnavailable)

// Poll intervals while every slot is taken: uniform in
// [pollMin, pollMin+pollJitter).
const (
	pollMin    = 50 * time.Millisecond
	pollJitter = 100 * time.Millisecond
)

// MaxSlots bounds Gate.Slots.
const MaxSlots = 4096

// Gate is a node-wide bound on concurrent boots.
type Gate struct {
	// Dir holds the slot files; made (0700) on first use.
	Dir string
	// Slots is how many boots may run at once (1..MaxSlots).
	Slots int
	// MaxWait bounds the wait for a slot; it must be positive.
	MaxWait time.Duration
}

// Slot is a held boot slot.
type Slot struct {
	// Index is the slot's number, 0..Slots-1.
	Index int
	// Waited is how long Acquire waited for it.
	Waited time.Duration
	f      *os.File
}

// Acquire takes a free slot, waiting for one up to g.MaxWait or until ctx
// ends. Without a free slot within the bound it fails with ErrNoSlot,
// naming the wait and the bound.
func (g Gate) Acquire(ctx context.Context) (*Slot, error) {
	if g.Slots < 1 || g.Slots > MaxSlots || g.MaxWait <= 0 || !filepath.IsAbs(g.Dir) {
		return nil, fmt.Errorf("boot slots: bad gate (dir %q, %d slots, wait %s): %w", g.Dir, g.Slots, g.MaxWait, errdefs.ErrInvalidArgument)
	}
	start := time.Now()
	if err := os.MkdirAll(g.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("boot slots: %w", err)
	}
	files := make([]*os.File, g.Slots)
	defer func() {
		for _, f := range files {
			if f != nil {
				_ = f.Close()
			}
		}
	}()
	for i := range files {
		f, err := os.OpenFile(filepath.Join(g.Dir, strconv.Itoa(i)), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("boot slots: %w", err)
		}
		files[i] = f
	}
	deadline := time.NewTimer(g.MaxWait)
	defer deadline.Stop()
	first := rand.IntN(g.Slots) //nolint:gosec // G404: spreads starts over the slots, no secret
	for {
		for k := range g.Slots {
			i := (first + k) % g.Slots
			err := unix.Flock(int(files[i].Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				s := &Slot{Index: i, Waited: time.Since(start), f: files[i]}
				files[i] = nil
				return s, nil
			}
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				return nil, fmt.Errorf("boot slots: locking slot %d: %w", i, err)
			}
		}
		poll := time.NewTimer(pollMin + rand.N(pollJitter)) //nolint:gosec // G404: jitter, no secret
		select {
		case <-poll.C:
		case <-deadline.C:
			poll.Stop()
			return nil, fmt.Errorf("waited %s for one of %d boot slots, all held by other starting VMs: %w", time.Since(start).Round(time.Millisecond), g.Slots, ErrNoSlot)
		case <-ctx.Done():
			poll.Stop()
			return nil, fmt.Errorf("waiting for a boot slot (%s so far): %w", time.Since(start).Round(time.Millisecond), context.Cause(ctx))
		}
	}
}

// Release frees the slot; releasing twice is a no-op. A Slot is for one
// goroutine at a time.
func (s *Slot) Release() error {
	if s == nil || s.f == nil {
		return nil
	}
	f := s.f
	s.f = nil
	// Closing the last descriptor drops the lock.
	return f.Close()
}
