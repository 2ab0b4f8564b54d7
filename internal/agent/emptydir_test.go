package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/storage"
)

// TestEmptyDirs: a volume is a tmpfs made for the first create that names
// it, with the mode, owner and size asked; a second create shares it; a
// failed create unmounts what no create kept, and a kept volume stays
// until the sandbox is destroyed. Bad names and modes are refused before
// anything is made.
func TestEmptyDirs(t *testing.T) {
	ctx := context.Background()
	e, root := testEmptyDirs(t)
	scratch := &api.EmptyDir{Name: "scratch", Mode: 0o2777, Uid: 0, Gid: 2000, SizeBytes: 4 << 20}
	p := filepath.Join(root, "scratch")

	done, err := e.acquire(ctx, []*api.EmptyDir{scratch, scratch})
	if err != nil {
		t.Fatal(err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC || fs.Blocks*uint64(fs.Bsize) != 4<<20 {
		t.Fatalf("%s: statfs %+v, %v; want a tmpfs of 4 MiB", p, fs, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o2777 || st.Gid != 2000 {
		t.Errorf("mode %#o, gid %d; want 02777, 2000", st.Mode&0o7777, st.Gid)
	}
	if !mounted(t, p) {
		t.Fatal("not mounted")
	}
	// A second create while the first is under way shares the volume
	// (different parameters are ignored); the first fails: the volume
	// stays for the second.
	done2, err := e.acquire(ctx, []*api.EmptyDir{{Name: "scratch", Mode: 0o700}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	done(false)
	if !mounted(t, p) {
		t.Fatal("unmounted while another create holds it")
	}
	done2(true)
	// A kept volume outlives a later failed create.
	done3, err := e.acquire(ctx, []*api.EmptyDir{{Name: "scratch"}, {Name: "other", Mode: 0o777}})
	if err != nil {
		t.Fatal(err)
	}
	done3(false)
	if !mounted(t, p) {
		t.Error("a kept volume was unmounted by a failed create")
	}
	if mounted(t, filepath.Join(root, "other")) {
		t.Error("the failed create's own volume stays mounted")
	}
	if b, err := os.ReadFile(filepath.Join(p, "f")); err != nil || string(b) != "x" {
		t.Errorf("the volume's file: %q, %v", b, err)
	}

	for _, bad := range []*api.EmptyDir{
		{Name: ".."}, {Name: "../etc"}, {Name: "a/b"}, {Name: ""}, {Name: "UPPER"},
		{Name: "setuid", Mode: 0o10000},
	} {
		if _, err := e.acquire(ctx, []*api.EmptyDir{{Name: "fresh"}, bad}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%+v: %v, want invalid argument", bad, err)
		}
		if _, err := os.Stat(filepath.Join(root, "fresh")); !os.IsNotExist(err) {
			t.Errorf("%+v: a refused request made something: %v", bad, err)
		}
	}

	if err := e.unmountAll(ctx); err != nil {
		t.Fatal(err)
	}
	if mounted(t, p) {
		t.Error("mounted after unmountAll")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("%s after unmountAll: %v, want it gone", p, err)
	}
}

// TestEmptyDirsBound: a sandbox holds at most maxEmptyDirs volumes; a
// create that asks for more is refused and leaves none of the volumes it
// mounted.
func TestEmptyDirsBound(t *testing.T) {
	ctx := context.Background()
	e, root := testEmptyDirs(t)
	reqs := make([]*api.EmptyDir, maxEmptyDirs+1)
	for i := range reqs {
		reqs[i] = &api.EmptyDir{Name: fmt.Sprintf("v%d", i), Mode: 0o777}
	}
	if _, err := e.acquire(ctx, reqs); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("%d volumes: %v, want invalid argument", len(reqs), err)
	}
	if len(e.dirs) != 0 || mounted(t, filepath.Join(root, "v0")) {
		t.Fatalf("a refused create left %d volumes", len(e.dirs))
	}
	done, err := e.acquire(ctx, reqs[:maxEmptyDirs])
	if err != nil {
		t.Fatalf("%d volumes: %v", maxEmptyDirs, err)
	}
	done(true)
	if _, err := e.acquire(ctx, reqs[maxEmptyDirs:]); !errdefs.IsInvalidArgument(err) {
		t.Errorf("one more: %v, want invalid argument", err)
	}
}

// TestEmptyDirsDestroyDuringCreate: a sandbox destroyed while a create
// holds a volume unmounts it; the create's end then touches nothing, not
// even a later volume of the same name.
func TestEmptyDirsDestroyDuringCreate(t *testing.T) {
	ctx := context.Background()
	e, root := testEmptyDirs(t)
	p := filepath.Join(root, "scratch")
	done, err := e.acquire(ctx, []*api.EmptyDir{{Name: "scratch", Mode: 0o777}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.unmountAll(ctx); err != nil {
		t.Fatal(err)
	}
	if mounted(t, p) {
		t.Fatal("mounted after unmountAll")
	}
	done2, err := e.acquire(ctx, []*api.EmptyDir{{Name: "scratch", Mode: 0o777}})
	if err != nil {
		t.Fatal(err)
	}
	done2(true)
	done(false)
	if !mounted(t, p) || e.dirs["scratch"] == nil {
		t.Error("the end of a create from before the destroy unmounted the new volume")
	}
}

// TestEmptyDirsUnmountFails: a volume whose unmount fails after a failed
// create stays known and mounted: the next create of its name uses it
// (not "file exists"), and the sandbox's destroy unmounts it.
func TestEmptyDirsUnmountFails(t *testing.T) {
	ctx := context.Background()
	e, root := testEmptyDirs(t)
	p := filepath.Join(root, "scratch")
	// Should the code under test have forgotten the volume.
	t.Cleanup(func() { _ = unix.Unmount(p, unix.MNT_DETACH) })
	e.unmountPoint = func(context.Context, string, string) error { return unix.EIO }
	done, err := e.acquire(ctx, []*api.EmptyDir{{Name: "scratch", Mode: 0o777}})
	if err != nil {
		t.Fatal(err)
	}
	done(false)
	if !mounted(t, p) || e.dirs["scratch"] == nil {
		t.Fatalf("after a failed unmount: mounted %v, known %v; want both", mounted(t, p), e.dirs["scratch"] != nil)
	}
	done2, err := e.acquire(ctx, []*api.EmptyDir{{Name: "scratch", Mode: 0o777}})
	if err != nil {
		t.Fatalf("a create of the volume's name after its failed unmount: %v", err)
	}
	done2(true)
	e.unmountPoint = unmountStorage
	if err := e.unmountAll(ctx); err != nil {
		t.Fatal(err)
	}
	if mounted(t, p) || len(e.dirs) != 0 {
		t.Errorf("after the destroy: mounted %v, volumes %d", mounted(t, p), len(e.dirs))
	}
}

// testEmptyDirs returns the emptyDir table of a test, its root in the
// test's temporary directory; the test's end unmounts what it holds.
func testEmptyDirs(t *testing.T) (*emptyDirs, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it mounts tmpfs")
	}
	root := filepath.Join(t.TempDir(), "emptydir")
	e := newEmptyDirs(root)
	t.Cleanup(func() {
		e.unmountPoint = unmountStorage
		_ = e.unmountAll(context.Background())
	})
	return e, root
}

// TestEmptyDirHostAgrees: the agent's directory and name rule are the
// host's (storage), which the agent does not import.
func TestEmptyDirHostAgrees(t *testing.T) {
	if emptyDirRoot != storage.GuestEmptyDirRoot {
		t.Errorf("agent %s, host %s", emptyDirRoot, storage.GuestEmptyDirRoot)
	}
	for _, n := range []string{"a", "scratch", "cache-1", "0", "-a", "a-", "A", "a_b", "a.b", "..", "a/b", "",
		"a23456789012345678901234567890123456789012345678901234567890123",
		"a234567890123456789012345678901234567890123456789012345678901234"} {
		if a, h := emptyDirName.MatchString(n), storage.ValidEmptyDirName(n); a != h {
			t.Errorf("%q: agent %v, host %v", n, a, h)
		}
	}
}
