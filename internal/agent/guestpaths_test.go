package agent

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/storage"
)

// TestGuestDirsHostAgrees: the guest's directories are those the host
// names (storage), which the agent does not import, and those the service
// works in lie under the tree open to the host's mounts.
func TestGuestDirsHostAgrees(t *testing.T) {
	for _, tc := range []struct{ name, agent, host string }{
		{"storage", guestDirs.storage, storage.GuestRuntimeDir},
		{"emptyDir", guestDirs.emptyDir, storage.GuestEmptyDirRoot},
		{"copied", guestDirs.copied, storage.GuestCopyDir},
	} {
		if tc.agent != tc.host {
			t.Errorf("%s: agent %s, host %s", tc.name, tc.agent, tc.host)
		}
	}
	for _, p := range []string{guestDirs.state, guestDirs.emptyDir, guestDirs.pause, guestDirs.copied} {
		if err := checkMountPoint(guestDirs.storage, p); err != nil {
			t.Error(err)
		}
	}
}

// testGuestPaths are the guest's directories (guestDirs) moved into a
// directory of the test: the tests run as root on a host, whose /run/hull
// they must not touch.
func testGuestPaths(t *testing.T) guestPaths {
	t.Helper()
	dir := t.TempDir()
	rebase := func(p string) string { return filepath.Join(dir, strings.TrimPrefix(p, storageRoot)) }
	return guestPaths{
		storage:  dir,
		state:    rebase(guestDirs.state),
		emptyDir: rebase(guestDirs.emptyDir),
		pause:    rebase(guestDirs.pause),
		copied:   rebase(guestDirs.copied),
	}
}

// guardedNames are the entries of the guest's storageRoot that the agent
// makes, that the host asks it to mount on, and that this package's tests
// name in requests. The host's /run/hull, a hull runtime's state directory,
// holds none of them: a runtime working beside the tests does not trip
// TestMain.
var guardedNames = []string{
	filepath.Base(containerStateDir), filepath.Base(emptyDirRoot), filepath.Base(pauseRootDir), filepath.Base(copiedDir),
	"block", "blockroot", "erofs", "shared", "shm", "scratch", "a", "b",
}

// storageRootLeftovers lists the guarded entries of the host's storageRoot
// and the mounts on them.
func storageRootLeftovers() (map[string]bool, error) {
	found := map[string]bool{}
	for _, n := range guardedNames {
		p := filepath.Join(storageRoot, n)
		if _, err := os.Lstat(p); err == nil {
			found[p] = true
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		for _, n := range guardedNames {
			p := filepath.Join(storageRoot, n)
			if fields[4] == p || strings.HasPrefix(fields[4], p+"/") {
				found["mount "+fields[4]] = true
			}
		}
	}
	return found, sc.Err()
}

// TestMain fails the package's tests if they left anything in the host's
// guest paths: the agent's directories under /run/hull or mounts there.
func TestMain(m *testing.M) {
	before, err := storageRootLeftovers()
	if err != nil {
		fmt.Fprintf(os.Stderr, "listing %s: %v\n", storageRoot, err)
		os.Exit(1)
	}
	code := m.Run()
	after, err := storageRootLeftovers()
	if err != nil {
		fmt.Fprintf(os.Stderr, "listing %s: %v\n", storageRoot, err)
		os.Exit(1)
	}
	for p := range after {
		if !before[p] {
			fmt.Fprintf(os.Stderr, "FAIL: the tests left %s on this host (unit tests use testGuestPaths)\n", p)
			code = 1
		}
	}
	os.Exit(code)
}
