package child

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/procfs"
)

// Process names one process for later: its PID with its start time, which
// together never name another process, even after the PID was reused.
type Process struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat: when the process
	// started, in clock ticks after boot.
	StartTime uint64 `json:"start_time"`
}

// procStat is what the runtime reads of /proc/<pid>/stat.
type procStat struct {
	state     byte
	pgrp      int
	startTime uint64
}

// parseStat parses the contents of /proc/<pid>/stat (procfs.StatFields).
func parseStat(b []byte) (procStat, error) {
	f, err := procfs.StatFields(b)
	if err != nil {
		return procStat{}, err
	}
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22.
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("stat has %d fields after the command name, want at least 20", len(f))
	}
	pgrp, err := strconv.Atoi(f[2])
	if err != nil {
		return procStat{}, fmt.Errorf("stat process group: %w", err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat start time: %w", err)
	}
	return procStat{state: f[0][0], pgrp: pgrp, startTime: start}, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// Identify names the process pid now is. Only a parent that has not
// reaped pid yet can be sure that it names its child.
func Identify(pid int) (Process, error) {
	if pid <= 0 {
		return Process{}, fmt.Errorf("no process %d", pid)
	}
	st, err := readStat(pid)
	if err != nil {
		return Process{}, fmt.Errorf("identifying process %d: %w", pid, err)
	}
	return Process{PID: pid, StartTime: st.startTime}, nil
}

// Running reports whether p still runs: its PID names a live process (not
// a zombie) with p's start time.
func (p Process) Running() bool {
	if p.PID <= 0 || p.StartTime == 0 {
		return false
	}
	st, err := readStat(p.PID)
	return err == nil && st.startTime == p.StartTime && st.state != 'Z'
}

// Kill sends SIGKILL to p if it still runs, and to its process group when
// p leads one (Start makes every child a group leader, so the group holds
// what the child started). A process that no longer runs, or whose PID now
// names another process, is left alone: Kill reports false.
func (p Process) Kill() (bool, error) {
	if p.PID <= 0 || p.StartTime == 0 {
		return false, nil
	}
	st, err := readStat(p.PID)
	if err != nil || st.startTime != p.StartTime || st.state == 'Z' {
		return false, nil
	}
	target := p.PID
	if st.pgrp == p.PID {
		target = -p.PID
	}
	if err := unix.Kill(target, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return true, fmt.Errorf("killing process %d: %w", p.PID, err)
	}
	return true, nil
}
