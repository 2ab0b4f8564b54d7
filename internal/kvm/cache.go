package kvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
)

// DefaultCacheFile is where ProbeCached keeps its result. /run is a tmpfs
// on most hosts, and the key below catches the cases where it is not.
const DefaultCacheFile = "/run/hull/kvm-probe.json"

// bootIDFile changes on every boot.
var bootIDFile = "/proc/sys/kernel/random/boot_id"

type cacheEntry struct {
	Key    string `json:"key"`
	Result Result `json:"result"`
}

// cacheVersion starts every key; a change to what the probe decides, or
// how, changes it, so that no verdict of an older probe is reused.
const cacheVersion = "v2"

// cacheKey names this boot and this /dev/kvm: the boot ID, the device
// number, inode and change time of the node (which change when the module
// providing it is reloaded) and the KVM modules loaded.
func cacheKey(dev string, modules []string) (string, error) {
	id, err := os.ReadFile(bootIDFile)
	if err != nil {
		return "", err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		return "", &os.PathError{Op: "stat", Path: dev, Err: err}
	}
	return fmt.Sprintf("%s boot=%s dev=%d ino=%d ctime=%d.%09d modules=%s", cacheVersion,
		strings.TrimSpace(string(id)), st.Rdev, st.Ino, st.Ctim.Sec, st.Ctim.Nsec,
		strings.Join(modules, ",")), nil
}

// ProbeCached returns the result cached in file (DefaultCacheFile when
// empty) when it was made on this boot for this /dev/kvm, and otherwise
// runs Probe and caches its result when it is conclusive: a negative
// verdict that came from the time limit (a stalled or loaded host) is
// never kept, so the next call probes again. Failing to read or write the
// cache only costs a probe.
func ProbeCached(ctx context.Context, timeout time.Duration, file string) Result {
	return probeCached(ctx, Device, file, func(ctx context.Context) Result { return Probe(ctx, timeout) })
}

func probeCached(ctx context.Context, dev, file string, probe func(context.Context) Result) Result {
	if file == "" {
		file = DefaultCacheFile
	}
	facts := hostFacts()
	key, err := cacheKey(dev, facts.Modules)
	if err != nil {
		// No device or no boot ID: probing is cheap and says why.
		return probe(ctx)
	}
	if b, err := os.ReadFile(file); err == nil {
		var e cacheEntry
		if json.Unmarshal(b, &e) == nil && e.Key == key {
			e.Result.Cached = true
			return e.Result
		}
	}
	r := probe(ctx)
	if ctx.Err() != nil || !r.Conclusive {
		// Cut short by the caller, or decided by the clock: not a
		// verdict on KVM to keep until the next reboot.
		return r
	}
	if err := writeCache(file, cacheEntry{Key: key, Result: r}); err != nil {
		log.G(ctx).WithError(err).Debug("kvm: not caching the probe result")
	}
	return r
}

func writeCache(file string, e cacheEntry) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil { //nolint:gosec // G301: the probe result is not secret; an unprivileged hull check reads it
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".kvm-probe-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // fails harmlessly once renamed
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}
