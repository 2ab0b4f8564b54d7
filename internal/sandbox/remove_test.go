package sandbox

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/child"
)

// requireRoot fails the test when it cannot mount: root is what it needs.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts: run it as root")
	}
}

// TestRemoveTreeIfUnmounted: a tree with a bind mount below it is kept,
// and what the mount shows is untouched; without the mount it is removed.
func TestRemoveTreeIfUnmounted(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	src := filepath.Join(base, "host-data")
	precious := filepath.Join(src, "precious")
	tree := filepath.Join(base, "state")
	target := filepath.Join(tree, "mounts", "c1", "rootfs")
	for _, d := range []string{src, target} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(precious, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_ = unix.Unmount(target, unix.MNT_DETACH)
		}
	})

	err := removeTreeIfUnmounted(tree)
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("removing a tree with a mount below: %v, want failed precondition", err)
	}
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me" {
		t.Fatalf("the mount's file after the refused removal: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(target, "precious")); err != nil {
		t.Fatalf("the mount is gone: %v", err)
	}

	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if err := removeTreeIfUnmounted(tree); err != nil {
		t.Fatalf("removing the unmounted tree: %v", err)
	}
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("tree still there: %v", err)
	}
	if _, err := os.Stat(precious); err != nil {
		t.Errorf("the bind source was touched: %v", err)
	}
	if err := removeTreeIfUnmounted(tree); err != nil {
		t.Errorf("removing a missing tree: %v", err)
	}
	if err := removeTreeIfUnmounted("relative"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative path: %v", err)
	}
}

// TestCleanupKeepsMountedState: Cleanup of a state directory with a mount
// it cannot release keeps the directory and fails.
func TestCleanupKeepsMountedState(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	src := t.TempDir()
	dir := StateDir(root, "mounted")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(dir, record{ID: "mounted"}); err != nil {
		t.Fatal(err)
	}
	// Outside the storage's own directories: Cleanup does not know it
	// and must not remove through it.
	target := filepath.Join(dir, "other")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "precious"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(target, unix.MNT_DETACH) })
	if err := Cleanup(context.Background(), root, "mounted"); err == nil {
		t.Fatal("Cleanup succeeded with a mount left below the state directory")
	}
	if _, err := os.Stat(filepath.Join(src, "precious")); err != nil {
		t.Fatalf("the mount's file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, recordName)); err != nil {
		t.Errorf("the record is gone with the directory kept: %v", err)
	}
}

// TestCleanupRecordedProcesses: Cleanup kills a recorded process only
// while its PID has the recorded start time; a reused PID is left alone.
func TestCleanupRecordedProcesses(t *testing.T) {
	start := func() (*exec.Cmd, child.Process, chan struct{}) {
		cmd := exec.Command("sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		p, err := child.Identify(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, p, done
	}
	root := t.TempDir()
	_, reused, reusedDone := start()
	_, owned, ownedDone := start()
	dir := StateDir(root, "pids")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	r := record{
		ID:    "pids",
		VMPID: reused.PID, VMStartTime: reused.StartTime + 7, // the PID now names another process
		VirtiofsPID: owned.PID, VirtiofsStartTime: owned.StartTime,
	}
	if err := writeRecord(dir, r); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(context.Background(), root, "pids"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ownedDone:
	case <-time.After(10 * time.Second):
		t.Error("the recorded process still runs")
	}
	select {
	case <-reusedDone:
		t.Error("the process with a reused PID was killed")
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory: %v", err)
	}
}
