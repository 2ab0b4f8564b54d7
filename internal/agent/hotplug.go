package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sysDevicesSystem is where the kernel lists CPUs and memory blocks.
const sysDevicesSystem = "/sys/devices/system"

const (
	// onlineWaitLimit bounds how long OnlineResources waits for hot-added
	// CPUs and memory blocks to appear.
	onlineWaitLimit = 30 * time.Second
	// onlinePoll is how often it looks again.
	onlinePoll = 50 * time.Millisecond
)

// The guest kernel (Debian's 6.1 cloud kernel, like most distribution
// kernels) adds the CPUs and memory blocks that ACPI announces but leaves
// them offline: CPUs because bringing them up is left to user space (udev
// rules elsewhere), memory because auto_online_blocks is "offline" unless
// the kernel was built or booted otherwise (memhp_default_state). The guest
// has no udev, so the agent onlines them.

// hotplugTree is a sysfs devices/system directory: cpu/ and memory/.
type hotplugTree struct{ root string }

// onlined is what a pass over the tree found online.
type onlined struct {
	cpus      uint32
	memoryMiB uint32
	// errs are the writes that failed in the pass.
	errs []error
}

// onlinePass onlines every present CPU and memory block that is offline
// and counts what is online afterwards.
func (t hotplugTree) onlinePass() (onlined, error) {
	var o onlined
	cpus, err := t.onlineCPUs(&o)
	if err != nil {
		return o, err
	}
	o.cpus = cpus
	mib, err := t.onlineMemory(&o)
	if err != nil {
		return o, err
	}
	o.memoryMiB = mib
	return o, nil
}

// onlineCPUs counts the online CPUs among cpuN/: those whose online file
// says 1, after writing 1 to those that say 0, and those without an online
// file (cpu0 on x86, which cannot go offline) that the kernel's online
// list names. A CPU whose directory is there before its files (the kernel
// creates them one after the other) counts once they are.
func (t hotplugTree) onlineCPUs(o *onlined) (uint32, error) {
	dir := filepath.Join(t.root, "cpu")
	ids, err := numbered(dir, "cpu")
	if err != nil {
		return 0, err
	}
	list := ""
	if b, err := os.ReadFile(filepath.Join(dir, "online")); err == nil {
		list = strings.TrimSpace(string(b))
	}
	var n uint32
	for _, id := range ids {
		f := filepath.Join(dir, fmt.Sprintf("cpu%d", id), "online")
		b, err := os.ReadFile(f)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if inCPUList(list, id) {
				n++
			}
			continue
		case err != nil:
			o.errs = append(o.errs, err)
			continue
		}
		if strings.TrimSpace(string(b)) == "1" {
			n++
			continue
		}
		if err := writeSysfs(f, "1"); err != nil {
			o.errs = append(o.errs, fmt.Errorf("onlining cpu%d: %w", id, err))
			continue
		}
		n++
	}
	return n, nil
}

// onlineMemory onlines the offline memory blocks and returns the size of
// the online ones in MiB. A guest without memory hotplug has no block size:
// it counts nothing.
func (t hotplugTree) onlineMemory(o *onlined) (uint32, error) {
	dir := filepath.Join(t.root, "memory")
	b, err := os.ReadFile(filepath.Join(dir, "block_size_bytes"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	blockSize, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil || blockSize == 0 {
		return 0, fmt.Errorf("memory block size %q: not a hexadecimal size", strings.TrimSpace(string(b)))
	}
	ids, err := numbered(dir, "memory")
	if err != nil {
		return 0, err
	}
	var blocks uint64
	for _, id := range ids {
		f := filepath.Join(dir, fmt.Sprintf("memory%d", id), "state")
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // being added
		}
		if err != nil {
			o.errs = append(o.errs, err)
			continue
		}
		switch strings.TrimSpace(string(b)) {
		case "online":
			blocks++
		case "offline":
			if err := writeSysfs(f, "online"); err != nil {
				// A concurrent call may have onlined it first.
				if b, rerr := os.ReadFile(f); rerr == nil && strings.TrimSpace(string(b)) == "online" {
					blocks++
					continue
				}
				o.errs = append(o.errs, fmt.Errorf("onlining memory block %d: %w", id, err))
				continue
			}
			blocks++
		}
	}
	return uint32(min(blocks*blockSize>>20, 1<<32-1)), nil
}

// onlineResources onlines what the guest has until it has at least cpus
// CPUs and memoryMiB MiB online, or until limit passed or ctx ended.
func onlineResources(ctx context.Context, t hotplugTree, cpus, memoryMiB uint32, limit time.Duration) (onlined, error) {
	deadline := time.Now().Add(limit)
	for {
		o, err := t.onlinePass()
		if err != nil {
			return o, err
		}
		if o.cpus >= cpus && o.memoryMiB >= memoryMiB {
			return o, nil
		}
		if !time.Now().Before(deadline) {
			err := fmt.Errorf("after %s the guest has %d of %d CPUs and %d of %d MiB online: %w",
				limit, o.cpus, cpus, o.memoryMiB, memoryMiB, context.DeadlineExceeded)
			return o, errors.Join(append([]error{err}, o.errs...)...)
		}
		select {
		case <-ctx.Done():
			return o, ctx.Err()
		case <-time.After(min(onlinePoll, time.Until(deadline))):
		}
	}
}

// numbered lists the N of the entries named prefix+N in dir.
func numbered(dir, prefix string) ([]int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ids []int
	for _, e := range entries {
		s, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || s == "" {
			continue
		}
		if id, err := strconv.Atoi(s); err == nil && id >= 0 && strconv.Itoa(id) == s {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// inCPUList reports whether a sysfs CPU list such as "0-3,6" holds id.
func inCPUList(list string, id int) bool {
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		if a <= id && id <= b {
			return true
		}
	}
	return false
}

// writeSysfs writes an attribute that must exist.
func writeSysfs(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// waitLimit is how long OnlineResources may wait: onlineWaitLimit, or less
// so that the answer leaves before the caller's deadline.
func waitLimit(ctx context.Context) time.Duration {
	limit := onlineWaitLimit
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		limit = min(limit, left-min(time.Second, left/10))
	}
	return max(limit, 0)
}
