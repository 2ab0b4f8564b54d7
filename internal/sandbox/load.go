package sandbox

import (
	"runtime"
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
