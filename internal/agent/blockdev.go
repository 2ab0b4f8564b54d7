package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

const (
	// sysBlock lists the guest's block devices.
	sysBlock = "/sys/block"
	// blockWait bounds how long a storage waits for its hot-added disk to
	// appear.
	blockWait = 20 * time.Second
	// blockPoll is how often it looks again.
	blockPoll = 20 * time.Millisecond
)

// diskNamePattern is the name of a virtio-blk disk: vda, vdb, ..., vdaa.
var diskNamePattern = regexp.MustCompile(`^vd[a-z]{1,4}$`)

// findDisk returns the device path (/dev/vdX) of the virtio-blk disk whose
// serial is serial, looking in sysRoot (/sys/block) every blockPoll until
// it appears, wait passes or ctx is done. Two disks with the serial are an
// error: the host names each disk once.
func findDisk(ctx context.Context, sysRoot, serial string, wait time.Duration) (string, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(blockPoll)
	defer tick.Stop()
	for {
		var found []string
		entries, err := os.ReadDir(sysRoot)
		if err != nil {
			return "", fmt.Errorf("listing disks: %w", err)
		}
		for _, e := range entries {
			if !diskNamePattern.MatchString(e.Name()) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(sysRoot, e.Name(), "serial"))
			if err == nil && strings.TrimSpace(string(b)) == serial {
				found = append(found, e.Name())
			}
		}
		switch len(found) {
		case 0:
		case 1:
			return "/dev/" + found[0], nil
		default:
			return "", fmt.Errorf("disks %s all have serial %q: %w", strings.Join(found, ", "), serial, errdefs.ErrFailedPrecondition)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return "", fmt.Errorf("no disk with serial %q appeared within %s: %w", serial, wait, errors.Join(context.DeadlineExceeded, errdefs.ErrNotFound))
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for the disk with serial %q: %w", serial, ctx.Err())
		}
	}
}

// mountDisk finds the disk with serial (findDisk) and mounts it with
// mount, within wait in all. A disk the kernel lists before it can be
// opened (ENXIO, or no device node yet: ENOENT) is tried again every
// blockPoll; any other error ends it. It returns the device path.
func mountDisk(ctx context.Context, sysRoot, serial string, wait time.Duration, mount func(dev string) error) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		dev, err := findDisk(ctx, sysRoot, serial, time.Until(deadline))
		if err != nil {
			return "", err
		}
		err = mount(dev)
		if err == nil {
			return dev, nil
		}
		if !errors.Is(err, unix.ENXIO) && !errors.Is(err, unix.ENOENT) {
			return "", fmt.Errorf("mounting %s: %w", dev, err)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("mounting %s: still %w after %s", dev, err, wait)
		}
		select {
		case <-time.After(blockPoll):
		case <-ctx.Done():
			return "", fmt.Errorf("mounting %s: %w", dev, ctx.Err())
		}
	}
}
