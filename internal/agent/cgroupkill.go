package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// killCgroup ends every process in the cgroup v2 directory dir and its
// descendants, those forked while it works included: by cgroup.kill
// (Linux 5.14), or on an older kernel by freezing the cgroup, killing
// what it holds and thawing it. Listing the processes and killing them
// once would miss what a process forks in between.
func killCgroup(dir string) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		if err != nil {
			return fmt.Errorf("killing the processes of cgroup %s: %w", dir, err)
		}
		return nil
	}
	return freezeAndKill(dir)
}

// freezeWait bounds the wait for a cgroup to be frozen.
const freezeWait = 5 * time.Second

// freezeAndKill is killCgroup without cgroup.kill. The cgroup is thawed
// whatever happens, so that the killed processes die.
func freezeAndKill(dir string) (retErr error) {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0); err != nil {
		return fmt.Errorf("freezing cgroup %s: %w", dir, err)
	}
	defer func() {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0); err != nil && retErr == nil {
			retErr = fmt.Errorf("thawing cgroup %s: %w", dir, err)
		}
	}()
	for deadline := time.Now().Add(freezeWait); ; {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			return fmt.Errorf("reading the events of cgroup %s: %w", dir, err)
		}
		if strings.Contains(string(b), "frozen 1") {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s not frozen after %v", dir, freezeWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	pids, err := cgroups.GetAllPids(dir)
	if err != nil {
		return fmt.Errorf("listing the processes of cgroup %s: %w", dir, err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("killing %d in cgroup %s: %w", pid, dir, err)
		}
	}
	return nil
}
