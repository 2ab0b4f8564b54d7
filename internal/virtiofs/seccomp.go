package virtiofs

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The daemon acts as root on the host directories it serves: a file it
// creates or chmods for the guest keeps whatever mode the guest asked for,
// and chmod by a file's owner needs no capability, so dropping CAP_FSETID
// does not stop a setuid-root file. A seccomp filter, installed on the
// thread that forks the daemon and so inherited by it and its sandbox
// child, refuses with EPERM (ENOSYS for the last item):
//
//   - chmod, fchmod, fchmodat and fchmodat2 with S_ISUID or S_ISGID in the
//     mode;
//   - open, openat and creat that may create a file (O_CREAT or O_TMPFILE)
//     with S_ISUID or S_ISGID in the mode;
//   - mknod and mknodat of a character or block device, or with S_ISUID or
//     S_ISGID (the daemon also runs without CAP_MKNOD);
//   - openat2 and io_uring_setup, whose modes the filter cannot see (the
//     daemon uses neither).
//
// Everything else is left to the daemon's own filter. System calls of
// another ABI (i386, x32) are refused outright.

// Field offsets in struct seccomp_data.
const (
	seccompNR   = 0
	seccompArch = 4
	seccompArgs = 16
)

const (
	retAllow = unix.SECCOMP_RET_ALLOW
	retEPERM = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	// retENOSYS makes a caller fall back to an older call.
	retENOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	// x32SyscallBit marks the x32 ABI's system call numbers on x86-64.
	x32SyscallBit = 0x40000000
	// privBits are the mode bits refused: set-user-ID and set-group-ID.
	privBits = unix.S_ISUID | unix.S_ISGID
	// createFlags are the open flags with which a mode applies.
	createFlags = unix.O_CREAT | (unix.O_TMPFILE &^ unix.O_DIRECTORY)
)

// ruleKind says how a system call's arguments are checked.
type ruleKind int

const (
	// modeRule refuses a mode argument with privBits.
	modeRule ruleKind = iota
	// openRule refuses a mode argument with privBits when the flags
	// argument has createFlags.
	openRule
	// mknodRule refuses a mode argument with privBits or of a device.
	mknodRule
	// denyRule refuses the call as unimplemented (ENOSYS), so that a
	// caller falls back to calls the filter can see (openat for openat2).
	denyRule
)

// rule is one system call the filter inspects; mode and flags are argument
// indices.
type rule struct {
	nr          uint32
	kind        ruleKind
	mode, flags int
}

// argLow loads the low 32 bits of argument i (little-endian: the first
// word). Modes and open flags are 32-bit.
func argLow(i int) bpf.Instruction {
	return bpf.LoadAbsolute{Off: uint32(seccompArgs + 8*i), Size: 4}
}

// block is the code run for a matching system call; it always returns.
func (r rule) block() []bpf.Instruction {
	allow, deny := bpf.RetConstant{Val: retAllow}, bpf.RetConstant{Val: retEPERM}
	checkMode := []bpf.Instruction{
		argLow(r.mode),
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: privBits, SkipTrue: 1},
		allow,
		deny,
	}
	switch r.kind {
	case openRule:
		return append([]bpf.Instruction{
			argLow(r.flags),
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: createFlags, SkipFalse: 0, SkipTrue: 1},
			allow,
		}, checkMode...)
	case mknodRule:
		return []bpf.Instruction{
			argLow(r.mode),
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: privBits, SkipTrue: 4},
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: unix.S_IFMT},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.S_IFCHR, SkipTrue: 2},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.S_IFBLK, SkipTrue: 1},
			allow,
			deny,
		}
	case denyRule:
		return []bpf.Instruction{bpf.RetConstant{Val: retENOSYS}}
	default:
		return checkMode
	}
}

// filterProgram assembles the filter for the running architecture.
func filterProgram() ([]bpf.RawInstruction, error) {
	arch, rules, ok := seccompRules()
	if !ok {
		return nil, fmt.Errorf("virtiofsd seccomp filter on %s: %w", runtime.GOARCH, errdefs.ErrNotImplemented)
	}
	deny := bpf.RetConstant{Val: retEPERM}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: seccompArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: arch, SkipTrue: 1},
		deny,
		bpf.LoadAbsolute{Off: seccompNR, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: x32SyscallBit, SkipFalse: 1},
		deny,
	}
	for _, r := range rules {
		b := r.block()
		// The accumulator holds the number again after a block that
		// did not match: blocks only run on a match and always return.
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: r.nr, SkipFalse: uint8(len(b))})
		prog = append(prog, b...)
	}
	prog = append(prog, bpf.RetConstant{Val: retAllow})
	return bpf.Assemble(prog)
}

// installFilter puts the filter on the calling OS thread only (no
// SECCOMP_FILTER_FLAG_TSYNC), with no_new_privs set, which the kernel
// requires of a caller without CAP_SYS_ADMIN and which the daemon sets
// for its own filter anyway. The caller must be locked to its thread and
// must never unlock it: the thread is tainted for good.
func installFilter(raw []bpf.RawInstruction) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); errno != 0 { //nolint:gosec // G103: seccomp(2) takes the address of a sock_fprog; KeepAlive below keeps its filter alive
		return fmt.Errorf("installing seccomp filter: %w", errno)
	}
	runtime.KeepAlive(filter)
	return nil
}
