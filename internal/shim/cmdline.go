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
// the process's argument start and end; prctl(PR_SET_MM_MAP) points those
// at a copy of args that the process keeps (a mapping never unmapped),
// with the rest of its layout as /proc/self/stat tells it. Unlike the
// single PR_SET_MM fields it needs no capability (with the executable
// left as it is), only a kernel built with checkpoint/restore support.
// The layout is read, then set: nothing in the shim moves its break
// meanwhile (the Go runtime does not use it).
func setCmdline(args []string) error {
	var b strings.Builder
	for _, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("command line argument with a NUL byte")
		}
		b.WriteString(a)
		b.WriteByte(0)
	}
	if b.Len() == 0 || b.Len() > maxCmdline {
		return fmt.Errorf("command line of %d bytes: want 1 to %d", b.Len(), maxCmdline)
	}
	m, err := currentMMMap()
	if err != nil {
		return err
	}
	mem, err := unix.Mmap(-1, 0, b.Len(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("command line memory: %w", err)
	}
	copy(mem, b.String())
	m.argStart = uint64(uintptr(unsafe.Pointer(&mem[0]))) //nolint:gosec // G103: the kernel is told where the new command line lies
	m.argEnd = m.argStart + uint64(len(mem))
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_MAP, uintptr(unsafe.Pointer(&m)), unsafe.Sizeof(m), 0); err != nil { //nolint:gosec // G103: the kernel reads the struct it defines
		_ = unix.Munmap(mem)
		return fmt.Errorf("setting the command line: %w", err)
	}
	return nil
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
