package hostcgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/procfs"
)

// Usage is what a group's processes use, read from its cgroup files; the
// fields a host cannot report stay zero.
type Usage struct {
	// MemoryBytes is the memory charged (memory.current on v2,
	// memory.usage_in_bytes on v1); MemoryLimitBytes the limit (0 for
	// none).
	MemoryBytes      uint64
	MemoryLimitBytes uint64
	// Anon, File, Shmem and InactiveFile break the usage down, from
	// memory.stat (v1: the total_* hierarchical counters).
	Anon, File, Shmem, InactiveFile uint64
	// OOMKills counts the processes the group's limit killed.
	OOMKills uint64
	// CPUUsageUsec is the CPU time used; CPUUserUsec and CPUSystemUsec its
	// parts.
	CPUUsageUsec, CPUUserUsec, CPUSystemUsec uint64
	// NrPeriods, NrThrottled and ThrottledUsec tell the CPU quota's effect.
	NrPeriods, NrThrottled, ThrottledUsec uint64
	// Pids is the number of tasks in the group.
	Pids uint64
}

// clockTicks is USER_HZ, the unit of v1's cpuacct.stat (100 on every
// Linux architecture the runtime supports).
const clockTicks = 100

// maxStatFile bounds a cgroup file read for statistics.
const maxStatFile = 64 << 10

// Usage reads the group's usage. Counters whose files are missing (a
// controller the host lacks) stay zero; the memory usage is required.
func (g *Group) Usage() (Usage, error) {
	var u Usage
	var err error
	if g.fs.Unified != "" {
		err = g.usageV2(&u)
	} else {
		err = g.usageV1(&u)
	}
	if err != nil {
		return Usage{}, fmt.Errorf("reading cgroup %s usage: %w", g.path, err)
	}
	return u, nil
}

func (g *Group) usageV2(u *Usage) error {
	d := g.dir("memory")
	if d == "" {
		return fmt.Errorf("no memory controller: %w", errdefs.ErrNotImplemented)
	}
	var err error
	if u.MemoryBytes, err = readUint(filepath.Join(d, "memory.current")); err != nil {
		return err
	}
	u.MemoryLimitBytes, _ = readUint(filepath.Join(d, "memory.max"))
	ms := readKV(filepath.Join(d, "memory.stat"))
	u.Anon, u.File, u.Shmem, u.InactiveFile = ms["anon"], ms["file"], ms["shmem"], ms["inactive_file"]
	u.OOMKills = readKV(filepath.Join(d, "memory.events"))["oom_kill"]
	cs := readKV(filepath.Join(d, "cpu.stat"))
	u.CPUUsageUsec, u.CPUUserUsec, u.CPUSystemUsec = cs["usage_usec"], cs["user_usec"], cs["system_usec"]
	u.NrPeriods, u.NrThrottled, u.ThrottledUsec = cs["nr_periods"], cs["nr_throttled"], cs["throttled_usec"]
	u.Pids, _ = readUint(filepath.Join(d, "pids.current"))
	return nil
}

func (g *Group) usageV1(u *Usage) error {
	d := g.dir("memory")
	if d == "" {
		return errors.New("no memory hierarchy")
	}
	var err error
	if u.MemoryBytes, err = readUint(filepath.Join(d, "memory.usage_in_bytes")); err != nil {
		return err
	}
	// v1 reports "no limit" as a page-rounded maximum.
	if l, _ := readUint(filepath.Join(d, "memory.limit_in_bytes")); l < 1<<62 {
		u.MemoryLimitBytes = l
	}
	ms := readKV(filepath.Join(d, "memory.stat"))
	u.Anon, u.File, u.Shmem, u.InactiveFile = ms["total_rss"], ms["total_cache"], ms["total_shmem"], ms["total_inactive_file"]
	u.OOMKills = readKV(filepath.Join(d, "memory.oom_control"))["oom_kill"]
	if d := g.dir("cpuacct"); d != "" {
		ns, _ := readUint(filepath.Join(d, "cpuacct.usage"))
		u.CPUUsageUsec = ns / 1000
		st := readKV(filepath.Join(d, "cpuacct.stat"))
		u.CPUUserUsec, u.CPUSystemUsec = st["user"]*1e6/clockTicks, st["system"]*1e6/clockTicks
	}
	if d := g.dir("cpu"); d != "" {
		cs := readKV(filepath.Join(d, "cpu.stat"))
		u.NrPeriods, u.NrThrottled, u.ThrottledUsec = cs["nr_periods"], cs["nr_throttled"], cs["throttled_time"]/1000
	}
	if d := g.dir("pids"); d != "" {
		u.Pids, _ = readUint(filepath.Join(d, "pids.current"))
	}
	return nil
}

// readUint reads a file holding one number; "max" reads as 0.
func readUint(file string) (uint64, error) {
	b, err := procfs.ReadFile(file, maxStatFile)
	if err != nil {
		return 0, err
	}
	s := string(bytes.TrimSpace(b))
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return v, nil
}

// readKV reads a flat keyed file ("key value" lines); a missing file reads
// as empty.
func readKV(file string) map[string]uint64 {
	m := map[string]uint64{}
	b, err := procfs.ReadFile(file, maxStatFile)
	if err != nil {
		return m
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			m[f[0]] = v
		}
	}
	return m
}
