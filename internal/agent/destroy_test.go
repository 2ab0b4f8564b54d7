package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// mounted tells whether p is a mount point in this mount namespace.
func mounted(t *testing.T, p string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

// TestDestroySandboxSyncs: a sandbox storage still busy at the destroy is
// only detached, which writes nothing back; the destroy, whose success
// lets the host end the VM without the guest's power-off, syncs after its
// unmounts.
func TestDestroySandboxSyncs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it mounts a tmpfs")
	}
	dir := filepath.Join(t.TempDir(), "storage")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	// A file held open keeps the storage busy: the unmount detaches it.
	busy, err := os.Create(filepath.Join(dir, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = busy.Close() }()

	s := newContainerService(&Agent{}, testGuestPaths(t))
	s.sandboxID, s.sandboxMounts = "sb", []string{dir}
	syncs, mountedAtSync := 0, false
	s.sync = func() {
		syncs++
		mountedAtSync = mounted(t, dir)
	}
	if _, err := s.DestroySandbox(context.Background(), &api.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	if syncs != 1 {
		t.Fatalf("DestroySandbox synced %d times, want once", syncs)
	}
	if mountedAtSync {
		t.Fatal("DestroySandbox synced before it unmounted the storage")
	}
	if mounted(t, dir) {
		t.Fatal("the busy storage is still mounted")
	}
}
