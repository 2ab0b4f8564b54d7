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

// settleClaimed makes the claimed warm shim pid what Start makes a cold
// server: a process in the claimer's cgroups (containerd's; best effort, a
// shim left in the factory's serves all the same) with containerd's OOM
// score, set by adjust. A warm shim's score is the factory's, which may be
// above containerd's and, without CAP_SYS_RESOURCE, not lowerable, where
// a cold server's only goes up: when it cannot be set, the claim is
// dropped rather than the pod's start failed. The claimed shim is killed
// and awaited (false, nil); it had not adopted its warm sandbox (the
// pod's first create does), which the factory cleans up as any warm
// shim's that exits before its adoption, and the caller starts a cold
// server on the same socket, as on a miss. A shim that does not die in
// time is an error: the socket must not get a second server.
func settleClaimed(pid int, adjust func(int) error) (bool, error) {
	_ = factory.JoinCgroupsOfSelf(pid)
	if err := adjust(pid); err == nil {
		return true, nil
	}
	if err := killAndWait(pid, claimedKillWait); err != nil {
		return false, fmt.Errorf("dropping the claimed shim %d, whose OOM score could not be set: %w", pid, err)
	}
	return false, nil
}

// killAndWait kills pid, which need not be a child, and waits up to wait
// for it to exit. One gone already is no error.
func killAndWait(pid int, wait time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	defer func() { _ = unix.Close(fd) }()
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing %d: %w", pid, err)
	}
	deadline := time.Now().Add(wait)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("process %d did not exit %s after SIGKILL", pid, wait)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("waiting for %d: %w", pid, err)
		}
		if n > 0 {
			return nil
		}
	}
}
