package qemu

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// A VM with Options.RunAsUIDBase set runs QEMU as a user of its own: QEMU
// opens every device, socket and file of its command line as root, then
// (-runas uid:gid) sets its real, effective and saved user and group IDs and
// its supplementary groups to the VM's ID, losing every capability. Nothing
// it does afterwards opens a path: QMP and the agent's socket are listening
// sockets made before the drop, the vhost-user connection to virtiofsd is
// made before it, taps come as descriptors or by name at start, hot-added
// memory is a memfd and hot-added vCPUs need no file. A QEMU taken over
// through device emulation can then neither reopen host files as root nor
// signal or trace another VM's QEMU, which has another ID.
//
// QEMU 7.2 installs its seccomp filter before it drops root, so with -runas
// -sandbox must allow set*uid (elevateprivileges=allow): a -runas QEMU under
// elevateprivileges=deny dies of SIGSYS at start. This gives nothing back:
// after the drop every one of QEMU's IDs is the VM's and it has no
// capabilities (and no_new_privs), so the calls can change nothing.

// uidLease holds one user ID of the range for one VM: a unix socket
// bound to the abstract address "@hull-qemu-uid-<uid>", which no other
// socket in the network namespace can bind while it is open. The runtime
// keeps it until the VM's QEMU has been reaped, and QEMU inherits a copy:
// the address stays bound while either lives, so an ID is never handed to a
// second VM while the QEMU that ran as it is still there, and there is no
// file to clean up. This matters because the kernel clears a process's
// parent-death signal when its user IDs change: a QEMU that dropped root
// does not die with a crashed runtime. containerd then runs the shim's
// delete, whose crash cleanup (sandbox.Cleanup) kills QEMU by its recorded
// PID and start time, which frees the ID. Every runtime process that uses a
// range must run in the same network namespace (the host's, where
// containerd starts shims).
type uidLease struct {
	uid uint32
	fd  int
}

// uidLeasePrefix starts the abstract socket address of a leased ID.
const uidLeasePrefix = "@hull-qemu-uid-"

// leaseUID takes the first free ID of [base, base+count).
func leaseUID(base, count uint32) (*uidLease, error) {
	for i := uint32(0); i < count; i++ {
		uid := base + i
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("uid lease socket: %w", err)
		}
		err = unix.Bind(fd, &unix.SockaddrUnix{Name: uidLeasePrefix + strconv.FormatUint(uint64(uid), 10)})
		if err == nil {
			return &uidLease{uid: uid, fd: fd}, nil
		}
		_ = unix.Close(fd)
		if !errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("uid lease %d: %w", uid, err)
		}
	}
	return nil, fmt.Errorf("all %d user IDs from %d are in use: %w", count, base, errdefs.ErrUnavailable)
}

// release gives the ID back; the QEMU that ran as it must have been
// reaped. It may be called on a nil lease.
func (l *uidLease) release() {
	if l != nil {
		_ = unix.Close(l.fd)
	}
}
