// Package startcount keeps a node's counts of sandbox and container starts,
// by outcome, in one small file under the runtime's state root.
//
// Every pod has a shim of its own, and a shim's counters die with it: a pod
// whose VM never started leaves no shim to scrape. So each start adds to a
// node-wide file (Path) that outlives the process that counted it, and
// `hull monitor` reads it at each scrape. The file holds a fixed set of
// counters as JSON, well under a page; it is root's (0600), opened without
// following symlinks, and each update is read-modify-write under an
// exclusive flock(2), so that concurrent shims never lose a count; readers
// take a shared lock. Lock waits are bounded (lockWait). Counters only grow
// while the file exists; the state root is usually on a tmpfs (/run), so
// they start again from zero at boot, which Prometheus reads as a counter
// reset. A file that does not parse (never written by this package) counts
// from zero again.
package startcount

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Name is the counts file under a state root; no sandbox may take it.
const Name = ".start-counts"

// Path is the counts file of the runtimes sharing stateRoot.
func Path(stateRoot string) string { return filepath.Join(stateRoot, Name) }

// maxFile bounds a read of the file.
const maxFile = 4 << 10

// lockWait bounds the wait for the file's lock; lockPoll is the interval
// between tries.
const (
	lockWait = 2 * time.Second
	lockPoll = 5 * time.Millisecond
)

// Counts are the node's starts, by outcome.
type Counts struct {
	// SandboxOK and SandboxError count sandbox starts (sandbox.Start) that
	// ended with a running sandbox, or failed.
	SandboxOK    uint64 `json:"sandbox_ok"`
	SandboxError uint64 `json:"sandbox_error"`
	// ContainerOK and ContainerError count container starts in running
	// sandboxes, and container creates or starts that failed there.
	ContainerOK    uint64 `json:"container_ok"`
	ContainerError uint64 `json:"container_error"`
}

// Event is one counted outcome.
type Event int

// The events Add counts.
const (
	SandboxStarted Event = iota
	SandboxFailed
	ContainerStarted
	ContainerFailed
)

// SandboxEvent is the event of a sandbox start that returned err.
func SandboxEvent(err error) Event {
	if err != nil {
		return SandboxFailed
	}
	return SandboxStarted
}

// ContainerEvent is the event of a container start that returned err.
func ContainerEvent(err error) Event {
	if err != nil {
		return ContainerFailed
	}
	return ContainerStarted
}

func (c *Counts) add(e Event) error {
	switch e {
	case SandboxStarted:
		c.SandboxOK++
	case SandboxFailed:
		c.SandboxError++
	case ContainerStarted:
		c.ContainerOK++
	case ContainerFailed:
		c.ContainerError++
	default:
		return fmt.Errorf("unknown start event %d", e)
	}
	return nil
}

// Add counts e in the file at path, creating it (and not its directory).
func Add(path string, e Event) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("start counts: %w", err)
	}
	defer func() { _ = f.Close() }()
	if err := lock(f, unix.LOCK_EX); err != nil {
		return err
	}
	// Closing the file drops the lock.
	c, err := read(f)
	if err != nil && !errors.Is(err, errCorrupt) {
		return err
	}
	if err := c.add(e); err != nil {
		return err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	// The counts only grow, and so does their encoding: one write over
	// the old one leaves no tail. Truncate all the same, for a file that
	// did not parse.
	if _, err := f.WriteAt(append(b, '\n'), 0); err != nil {
		return fmt.Errorf("start counts: %w", err)
	}
	if err := f.Truncate(int64(len(b) + 1)); err != nil {
		return fmt.Errorf("start counts: %w", err)
	}
	return nil
}

// Read returns the counts in the file at path; zero when there is no file
// (nothing started yet).
func Read(path string) (Counts, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return Counts{}, nil
	}
	if err != nil {
		return Counts{}, fmt.Errorf("start counts: %w", err)
	}
	defer func() { _ = f.Close() }()
	if err := lock(f, unix.LOCK_SH); err != nil {
		return Counts{}, err
	}
	return read(f)
}

// errCorrupt reports a file that does not parse.
var errCorrupt = errors.New("start counts do not parse")

func read(f *os.File) (Counts, error) {
	fi, err := f.Stat()
	if err != nil {
		return Counts{}, fmt.Errorf("start counts: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Counts{}, fmt.Errorf("start counts: %s is not a regular file", f.Name())
	}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, maxFile))
	if err != nil {
		return Counts{}, fmt.Errorf("start counts: %w", err)
	}
	var c Counts
	if len(b) == 0 {
		return c, nil
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return Counts{}, fmt.Errorf("%s: %w: %w", f.Name(), errCorrupt, err)
	}
	return c, nil
}

// lock takes how (LOCK_EX or LOCK_SH) on f within lockWait.
func lock(f *os.File, how int) error {
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("start counts: locking %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start counts: %s locked for more than %s", f.Name(), lockWait)
		}
		time.Sleep(lockPoll)
	}
}
