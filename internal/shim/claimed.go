package shim

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/factory"
)

// claimedKillWait bounds the wait for a killed claimed shim to exit.
const claimedKillWait = 5 * time.Second

// settleClaimed makes the claimed warm shim, held by pidfd, what Start
// makes a cold server: a process in the claimer's cgroups (containerd's;
// best effort, a shim left in the factory's serves all the same) with
// containerd's OOM score, set by adjust. A warm shim's score is the
// factory's, which may be above containerd's and, without
// CAP_SYS_RESOURCE, not lowerable, where a cold server's only goes up:
// when it cannot be set, the claim is dropped rather than the pod's start
// failed. The claimed shim is killed and awaited (false, nil); it had not
// adopted its warm sandbox (the pod's first create does), which the
// factory cleans up as any warm shim's that exits before its adoption,
// and the caller starts a cold server on the same socket, as on a miss. A
// shim that does not die in time is an error: the socket must not get a
// second server.
//
// The pidfd comes from the hand-over (factory.Handoff), which opened it
// while the warm shim was alive and answering, before the factory, its
// parent, could reap it: the kill and the wait go to that process and no
// other, even were its PID reused. The steps that name it by PID
// (cgroups, OOM score) run only while the pidfd shows it alive; a claimed
// shim that is gone by then, or that exits while it is being settled (so
// those steps may have met another process), is dropped too. settleClaimed
// closes pidfd.
func settleClaimed(pidfd int, adjust func(int) error) (bool, error) {
	defer func() { _ = unix.Close(pidfd) }()
	pid, err := factory.PidfdPID(pidfd)
	if err == nil && pid > 0 {
		_ = factory.JoinCgroupsOfSelf(pid)
		if err = adjust(pid); err == nil {
			if gone, err := exited(pidfd, 0); err != nil || !gone {
				return err == nil, err
			}
			return false, nil
		}
	}
	if err := killAndWait(pidfd, claimedKillWait); err != nil {
		return false, fmt.Errorf("dropping the claimed shim (pid %d), not settled: %w", pid, err)
	}
	return false, nil
}

// killAndWait kills the process pidfd refers to, which need not be a
// child, and waits up to wait for it to exit. One gone already is no
// error. The pidfd stays the caller's.
func killAndWait(pidfd int, wait time.Duration) error {
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing the process: %w", err)
	}
	gone, err := exited(pidfd, wait)
	if err != nil {
		return err
	}
	if !gone {
		return fmt.Errorf("the process did not exit %s after SIGKILL", wait)
	}
	return nil
}

// exited waits up to wait for the process pidfd refers to to exit, and
// tells whether it did.
func exited(pidfd int, wait time.Duration) (bool, error) {
	deadline := time.Now().Add(wait)
	for {
		left := max(time.Until(deadline), 0)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int((left+time.Millisecond-1)/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("waiting for the process: %w", err)
		}
		if n > 0 {
			return true, nil
		}
		if left == 0 {
			return false, nil
		}
	}
}
