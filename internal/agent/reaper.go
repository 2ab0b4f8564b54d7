package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/procfs"
)

// reaper waits for the zombies among the agent's children that nobody else
// waits for: orphans reparented to PID 1 (or to the agent as a child
// subreaper). It never calls wait4(-1): the container runtime forks children
// and waits for their pids itself, and a catch-all wait would steal their
// exit status.
//
// Code that forks a child it will wait for does so inside spawn, which holds
// the reaper off while it runs and registers the pids it returns as owned.
// Once the owner has waited, it calls release. The reaper only reaps zombies
// it finds in /proc whose parent is the agent and that are not owned.
type reaper struct {
	proc string // mount point of procfs
	self int

	// mu is held for reading by spawners across fork and registration and
	// for writing by a reaping pass, so that a child that exits before its
	// pid is registered is never reaped.
	mu sync.RWMutex

	ownedMu sync.Mutex
	owned   map[int]int // pid -> registrations; guarded by ownedMu

	kick chan struct{}
}

func newReaper(proc string) *reaper {
	return &reaper{proc: proc, self: os.Getpid(), owned: map[int]int{}, kick: make(chan struct{}, 1)}
}

// spawn runs start, which forks children and returns the pids its caller
// will wait for, with reaping held off, and registers those pids.
func (r *reaper) spawn(start func() ([]int, error)) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pids, err := start()
	r.ownedMu.Lock()
	for _, p := range pids {
		r.owned[p]++
	}
	r.ownedMu.Unlock()
	return err
}

// release gives pid back after its owner has waited for it (or gave up).
func (r *reaper) release(pid int) {
	r.ownedMu.Lock()
	if r.owned[pid]--; r.owned[pid] <= 0 {
		delete(r.owned, pid)
	}
	r.ownedMu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run reaps on every SIGCHLD and release until ctx is done.
func (r *reaper) run(ctx context.Context) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	for {
		r.reap(ctx)
		select {
		case <-sig:
		case <-r.kick:
		case <-ctx.Done():
			return
		}
	}
}

// reap does one pass and returns the pids it reaped.
func (r *reaper) reap(ctx context.Context) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.anyZombie() {
		return nil
	}
	zombies, err := r.zombies()
	if err != nil {
		log.G(ctx).WithError(err).Warn("reaper: scanning processes")
		return nil
	}
	r.ownedMu.Lock()
	orphans := unowned(zombies, r.owned)
	r.ownedMu.Unlock()
	var reaped []int
	for _, pid := range orphans {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil || got != pid {
			continue
		}
		reaped = append(reaped, pid)
		log.G(ctx).WithFields(log.Fields{"pid": pid, "status": waitStatusString(ws)}).Debug("reaped orphan")
	}
	return reaped
}

// anyZombie peeks, without reaping, whether any child has exited.
func (r *reaper) anyZombie() bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err != nil {
		return false
	}
	// Linux leaves the zeroed siginfo alone when no child has exited.
	return info.Signo != 0
}

// unowned lists the pids of zombies that nobody registered.
func unowned(zombies []int, owned map[int]int) []int {
	var out []int
	for _, z := range zombies {
		if owned[z] == 0 {
			out = append(out, z)
		}
	}
	return out
}

// zombies lists the agent's children in state Z.
func (r *reaper) zombies() ([]int, error) {
	ents, err := os.ReadDir(r.proc)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", r.proc, pid))
		if err != nil {
			continue // gone meanwhile
		}
		st, err := parseStat(b)
		if err != nil {
			continue
		}
		if st.ppid == r.self && st.state == 'Z' {
			out = append(out, pid)
		}
	}
	return out, nil
}

// procStat is the part of /proc/<pid>/stat the agent reads.
type procStat struct {
	state   byte
	ppid    int
	pgrp    int
	session int
}

// parseStat reads state, ppid, process group and session from a
// /proc/<pid>/stat line (procfs.StatFields).
func parseStat(b []byte) (procStat, error) {
	f, err := procfs.StatFields(b)
	if err != nil {
		return procStat{}, err
	}
	if len(f) < 4 {
		return procStat{}, errors.New("stat: short line")
	}
	var ids [3]int
	for i, name := range []string{"ppid", "pgrp", "session"} {
		n, err := strconv.Atoi(f[1+i])
		if err != nil {
			return procStat{}, fmt.Errorf("stat: %s: %w", name, err)
		}
		ids[i] = n
	}
	return procStat{state: f[0][0], ppid: ids[0], pgrp: ids[1], session: ids[2]}, nil
}

func waitStatusString(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("status %#x", uint32(ws))
}
