package podmetrics

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/procfs"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times.
const clockTicks = 100

// maxProcFile bounds a /proc file read.
const maxProcFile = 64 << 10

// ProcUsage is what one host process uses.
type ProcUsage struct {
	// CPUSeconds is user and system time.
	CPUSeconds float64
	// RSSBytes and PSSBytes are its resident and proportional set sizes
	// (PSS is 0 where smaps_rollup is missing).
	RSSBytes, PSSBytes uint64
	// FDs and Threads count its open file descriptors and threads.
	FDs, Threads uint64
}

// errGone reports a process that no longer runs under its recorded identity.
var errGone = errors.New("process gone")

// ReadProc reads what process p uses, its PSS only when withPSS is set
// (smaps_rollup walks the process's page tables: about 20 ms for a QEMU
// of 250 MiB). It fails when p's PID no longer names the process that was
// recorded (it ended, or the PID was reused).
func ReadProc(p child.Process, withPSS bool) (ProcUsage, error) {
	if !p.Running() {
		return ProcUsage{}, fmt.Errorf("process %d: %w", p.PID, errGone)
	}
	dir := fmt.Sprintf("/proc/%d", p.PID)
	var u ProcUsage
	b, err := procfs.ReadFile(dir+"/stat", maxProcFile)
	if err != nil {
		return ProcUsage{}, err
	}
	if u.CPUSeconds, err = parseStatCPU(b); err != nil {
		return ProcUsage{}, fmt.Errorf("%s/stat: %w", dir, err)
	}
	if b, err = procfs.ReadFile(dir+"/status", maxProcFile); err != nil {
		return ProcUsage{}, err
	}
	st := procfs.ParseKB(b)
	u.RSSBytes, u.Threads = st["VmRSS"], st["Threads"]
	if withPSS {
		if b, err := procfs.ReadFile(dir+"/smaps_rollup", maxProcFile); err == nil {
			u.PSSBytes = procfs.ParseKB(b)["Pss"]
		}
	}
	u.FDs, _ = countDir(dir + "/fd")
	// The PID could have been reused while it was read.
	if !p.Running() {
		return ProcUsage{}, fmt.Errorf("process %d: %w", p.PID, errGone)
	}
	return u, nil
}

// RSS reads the resident set size of a process by PID alone (for `hull
// list`, which shows what is there now).
func RSS(pid int) (uint64, error) {
	b, err := procfs.ReadFile(fmt.Sprintf("/proc/%d/status", pid), maxProcFile)
	if err != nil {
		return 0, err
	}
	return procfs.ParseKB(b)["VmRSS"], nil
}

// parseStatCPU reads utime and stime (fields 14 and 15) of
// /proc/<pid>/stat (procfs.StatFields).
func parseStatCPU(b []byte) (float64, error) {
	f, err := procfs.StatFields(b)
	if err != nil {
		return 0, err
	}
	// f[0] is field 3; utime is field 14, f[11].
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(ut+st) / clockTicks, nil
}

// countDir counts a directory's entries without holding them all.
func countDir(dir string) (uint64, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	var n uint64
	for {
		names, err := f.Readdirnames(256)
		n += uint64(len(names))
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
