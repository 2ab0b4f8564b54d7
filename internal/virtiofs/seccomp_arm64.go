package virtiofs

import "golang.org/x/sys/unix"

func seccompRules() (arch uint32, rules []rule, ok bool) {
	return unix.AUDIT_ARCH_AARCH64, []rule{
		{nr: unix.SYS_FCHMOD, kind: modeRule, mode: 1},
		{nr: unix.SYS_FCHMODAT, kind: modeRule, mode: 2},
		{nr: unix.SYS_FCHMODAT2, kind: modeRule, mode: 2},
		{nr: unix.SYS_OPENAT, kind: openRule, flags: 2, mode: 3},
		{nr: unix.SYS_MKNODAT, kind: mknodRule, mode: 2},
		{nr: unix.SYS_OPENAT2, kind: denyRule},
		{nr: unix.SYS_IO_URING_SETUP, kind: denyRule},
	}, true
}
