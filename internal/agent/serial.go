package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// hostPollInterval is how often waitHost looks for the host without a
// SIGIO.
const hostPollInterval = 100 * time.Millisecond

// findPort returns the device node of the virtio-serial port called name,
// from /sys/class/virtio-ports/*/name (there is no udev in the guest). It
// waits until the port shows up or ctx is done: ports appear when the host
// side of the device announces them, after the driver is loaded.
func findPort(ctx context.Context, sysfs, dev, name string) (string, error) {
	delay := time.Millisecond
	for {
		ents, _ := filepath.Glob(filepath.Join(sysfs, "class/virtio-ports/*/name"))
		for _, e := range ents {
			b, err := os.ReadFile(e)
			if err != nil || strings.TrimSpace(string(b)) != name {
				continue
			}
			node := filepath.Join(dev, filepath.Base(filepath.Dir(e)))
			if _, err := os.Stat(node); err == nil {
				return node, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("virtio-serial port %q did not appear (ports: %d): %w", name, len(ents), context.Cause(ctx))
		case <-time.After(delay):
		}
		// A short cap: the port appears within ~0.1 s of the driver
		// loading, and every millisecond of delay here is boot time.
		delay = min(2*delay, 4*time.Millisecond)
	}
}

// serveSerial serves yamux sessions on the virtio-serial port at path until
// ctx is done. The port is opened afresh for every session, which also
// drops whatever an old session left unread in the guest.
//
// While no host is connected, reading the port returns 0 bytes at once and
// poll reports POLLHUP at once: the agent would spin. So it waits for SIGIO
// instead, which the driver sends (with O_ASYNC) when the host side opens.
// Reads during a session block in Go's poller, which virtio ports support.
func (a *Agent) serveSerial(ctx context.Context, path string) error {
	sigio := make(chan os.Signal, 1)
	signal.Notify(sigio, unix.SIGIO)
	defer signal.Stop(sigio)
	first := true
	for ctx.Err() == nil {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("opening virtio-serial port: %w", err)
		}
		if first {
			a.markServing(ctx)
			first = false
		}
		if err := waitHost(ctx, f, sigio); err != nil {
			_ = f.Close()
			return err
		}
		log.G(ctx).Debug("host connected to the serial port")
		if err := a.serveSession(ctx, f); err != nil {
			log.G(ctx).WithError(err).Warn("serial session ended")
		} else {
			log.G(ctx).Debug("serial session ended")
		}
		_ = f.Close()
	}
	return nil
}

// waitHost returns once the host side of the port is open. It arms SIGIO on
// the port while it waits and disarms it before returning, so that a busy
// session is not interrupted by a signal for every packet.
func waitHost(ctx context.Context, f *os.File, sigio <-chan os.Signal) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	setAsync := func(on bool) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if on {
				if _, serr = unix.FcntlInt(fd, unix.F_SETOWN, os.Getpid()); serr != nil {
					return
				}
			}
			fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
			if err != nil {
				serr = err
				return
			}
			if on {
				fl |= unix.O_ASYNC
			} else {
				fl &^= unix.O_ASYNC
			}
			_, serr = unix.FcntlInt(fd, unix.F_SETFL, fl)
		})
		return errors.Join(err, serr)
	}
	connected := func() (bool, error) {
		var (
			ok   bool
			perr error
		)
		err := rc.Control(func(fd uintptr) {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
			_, perr = unix.Poll(p, 0)
			ok = p[0].Revents&unix.POLLHUP == 0
		})
		return ok, errors.Join(err, perr)
	}
	if err := setAsync(true); err != nil {
		return fmt.Errorf("arming SIGIO on the serial port: %w", err)
	}
	defer func() { _ = setAsync(false) }()
	// A safety net for a lost SIGIO: a poll every 100 ms while no host is
	// connected (at boot and between sessions) bounds the delay a lost
	// signal causes, at a cost a waiting guest does not feel. A poll a
	// minute let a pod's start (2 vCPUs) outlast the host's 30 s dial
	// timeout once.
	tick := time.NewTicker(hostPollInterval)
	defer tick.Stop()
	waited := false
	for {
		ok, err := connected()
		if err != nil {
			return fmt.Errorf("polling the serial port: %w", err)
		}
		if ok {
			return nil
		}
		if !waited {
			log.G(ctx).Debug("waiting for the host to connect")
			waited = true
		}
		select {
		case <-sigio:
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
