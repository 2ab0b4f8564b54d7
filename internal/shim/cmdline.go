package shim

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxCmdline bounds the command line setCmdline writes.
const maxCmdline = 64 << 10

// mmMap is the kernel's struct prctl_mm_map: a process's memory layout as
// prctl(PR_SET_MM, PR_SET_MM_MAP) sets it.
type mmMap struct {
	startCode, endCode, startData, endData uint64
	startBrk, brk, startStack              uint64
	argStart, argEnd, envStart, envEnd     uint64
	auxv                                   uint64
	auxvSize                               uint32
	exeFD                                  uint32
}

// setCmdline makes the process's command line, as /proc/<pid>/cmdline and
// ps show it, read args: a claimed warm shim shows the pod's server
// arguments rather than its warm ones. The kernel shows the memory between
// the process's argument start and end, which setCmdline points at a copy
// of args that the process keeps (a mapping never unmapped). It returns
// how it did so:
//
//   - "arg fields": prctl(PR_SET_MM, PR_SET_MM_ARG_START) and
//     PR_SET_MM_ARG_END, each of which changes that one field under the
//     kernel's own lock and leaves the rest of the layout, the program
//     break above all, as the kernel has it. It needs CAP_SYS_RESOURCE,
//     which root normally has. Between the two calls a reader of the
//     command line may see the new start with the old end.
//   - "map", where the capability is missing: prctl(PR_SET_MM_MAP), which
//     needs none but sets the whole layout, the break as read just before
//     with brk(0). A break moved in between would be set back to a stale
//     value, and one lowered meanwhile would make the next growth of the
//     heap map nothing. Only the C allocator moves the break (the Go
//     runtime never does), and keepBreak first stops it from ever
//     lowering it; a stale value is then one below the heap's end, under
//     which the kernel only refuses the allocator's next growth of the
//     break, and the allocator maps memory instead.
func setCmdline(args []string) (string, error) {
	var b strings.Builder
	for _, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return "", errors.New("command line argument with a NUL byte")
		}
		b.WriteString(a)
		b.WriteByte(0)
	}
	if b.Len() == 0 || b.Len() > maxCmdline {
		return "", fmt.Errorf("command line of %d bytes: want 1 to %d", b.Len(), maxCmdline)
	}
	m, err := currentMMMap()
	if err != nil {
		return "", err
	}
	mem, err := unix.Mmap(-1, 0, b.Len(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return "", fmt.Errorf("command line memory: %w", err)
	}
	copy(mem, b.String())
	start := uint64(uintptr(unsafe.Pointer(&mem[0]))) //nolint:gosec // G103: the kernel is told where the new command line lies
	end := start + uint64(len(mem))
	held, err := setArgFields(start, end, m.argStart, m.argEnd)
	if err == nil {
		return "arg fields", nil
	}
	if held {
		// The copy stays mapped: the kernel may show it.
		return "", err
	}
	if !errors.Is(err, unix.EPERM) {
		_ = unix.Munmap(mem)
		return "", err
	}
	if err := keepBreak(); err != nil {
		_ = unix.Munmap(mem)
		return "", fmt.Errorf("setting the command line without CAP_SYS_RESOURCE: %w", err)
	}
	// The layout again, the break last of all, right before the call.
	if m, err = currentMMMap(); err != nil {
		_ = unix.Munmap(mem)
		return "", err
	}
	m.argStart, m.argEnd = start, end
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_MAP, uintptr(unsafe.Pointer(&m)), unsafe.Sizeof(m), 0); err != nil { //nolint:gosec // G103: the kernel reads the struct it defines
		_ = unix.Munmap(mem)
		return "", fmt.Errorf("setting the command line: %w", err)
	}
	return "map", nil
}

// setArgFields points the process's argument start and end at [start,
// end), from [oldStart, oldEnd), one field at a time. The kernel keeps
// the start at or below the end after each call: the start goes first
// unless the new copy lies above the old one. When the second call fails,
// the first is undone; held tells that the undo failed too, and the
// kernel still points at the copy.
func setArgFields(start, end, oldStart, oldEnd uint64) (held bool, err error) {
	type field struct {
		opt      int
		val, old uint64
	}
	steps := [2]field{{unix.PR_SET_MM_ARG_START, start, oldStart}, {unix.PR_SET_MM_ARG_END, end, oldEnd}}
	if start > oldEnd {
		steps[0], steps[1] = steps[1], steps[0]
	}
	if err := setMM(steps[0].opt, steps[0].val); err != nil {
		return false, fmt.Errorf("setting the command line: %w", err)
	}
	if err := setMM(steps[1].opt, steps[1].val); err != nil {
		if rerr := setMM(steps[0].opt, steps[0].old); rerr != nil {
			return true, fmt.Errorf("setting the command line: %w (and restoring it: %w)", err, rerr)
		}
		return false, fmt.Errorf("setting the command line: %w", err)
	}
	return false, nil
}

// setMM sets one field of the process's memory layout.
func setMM(opt int, val uint64) error {
	return unix.Prctl(unix.PR_SET_MM, uintptr(opt), uintptr(val), 0, 0)
}

// currentMMMap reads the process's memory layout from /proc/self/stat
// (fields 26 to 28 and 45 to 51) and its break from brk(0); the executable
// is left as it is (exeFD -1).
func currentMMMap() (mmMap, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return mmMap{}, err
	}
	// The fields after the command name, which may hold anything but ends
	// at the last ')'; the first of them is field 3.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return mmMap{}, errors.New("/proc/self/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	field := func(n int) uint64 {
		if n-3 >= len(f) {
			err = fmt.Errorf("/proc/self/stat: no field %d", n)
			return 0
		}
		v, perr := strconv.ParseUint(f[n-3], 10, 64)
		if perr != nil {
			err = fmt.Errorf("/proc/self/stat field %d: %w", n, perr)
		}
		return v
	}
	m := mmMap{
		startCode: field(26), endCode: field(27), startStack: field(28),
		startData: field(45), endData: field(46), startBrk: field(47),
		argStart: field(48), argEnd: field(49), envStart: field(50), envEnd: field(51),
		exeFD: ^uint32(0),
	}
	if err != nil {
		return mmMap{}, err
	}
	brk, _, errno := unix.RawSyscall(unix.SYS_BRK, 0, 0, 0)
	if errno != 0 {
		return mmMap{}, fmt.Errorf("brk: %w", errno)
	}
	m.brk = uint64(brk)
	return m, nil
}
