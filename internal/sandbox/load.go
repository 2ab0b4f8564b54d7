package sandbox

import (
	"fmt"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// scaledDialTimeout is the agent dial timeout of a boot that starts while
// the host's 1-minute load average per CPU is load: d stretched by that
// load, by at most maxScale, never shortened. A TCG guest on a host whose
// CPUs are all taken boots that much slower; a guest that never answers
// still fails within d x maxScale.
func scaledDialTimeout(d time.Duration, maxScale, load float64) time.Duration {
	if maxScale <= 1 || load <= 1 {
		return d
	}
	return time.Duration(float64(d) * min(load, maxScale))
}

// hostLoadPerCPU is the 1-minute load average divided by the CPU count; 0
// when it cannot be read.
func hostLoadPerCPU() float64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return float64(si.Loads[0]) / (1 << unix.SI_LOAD_SHIFT) / float64(runtime.NumCPU())
}

// minStateRoom is the free space a start wants in the state root: its
// sockets, pid files and record take little, but a VM whose console log
// cannot be written fails in ways that do not say why.
const minStateRoom = 1 << 20

// checkRoom fails with ENOSPC when the state root's file system has less
// than minStateRoom free, before anything starts.
func checkRoom(root string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("state root %s: %w", root, err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < minStateRoom { //nolint:gosec // G115: Bsize is positive
		return fmt.Errorf("state root %s has %d KiB free, a sandbox needs %d KiB: %w", root, free>>10, minStateRoom>>10, syscall.ENOSPC)
	}
	return nil
}
