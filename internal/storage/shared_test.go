package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// needed fails when CI is set and skips otherwise.
func needed(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (required when CI is set)")
	}
	t.Skip(msg)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		needed(t, "test needs root to mount")
	}
}

// testDir is a temporary directory that must hold no mount when the test
// ends.
func testDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() {
		if left, _ := mountsUnder(dir); len(left) > 0 {
			t.Errorf("mounts left behind: %s", strings.Join(left, ", "))
			_ = unmountAll(dir)
		}
	})
	return dir
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fixture is a bundle and bind sources on the host.
type fixture struct {
	dir, bundle, rw, ro, file, sub string
	state                          string
}

func newFixture(t *testing.T) *fixture {
	dir := testDir(t)
	f := &fixture{
		dir:    dir,
		bundle: filepath.Join(dir, "bundle"),
		rw:     filepath.Join(dir, "rw"),
		ro:     filepath.Join(dir, "ro"),
		file:   filepath.Join(dir, "hosts"),
		sub:    filepath.Join(dir, "ro", "sub"),
		state:  filepath.Join(dir, "state"),
	}
	writeFile(t, filepath.Join(f.bundle, "rootfs", "etc", "hello"), "from the image\n")
	writeFile(t, filepath.Join(f.rw, "a"), "rw volume\n")
	writeFile(t, filepath.Join(f.ro, "b"), "ro volume\n")
	writeFile(t, f.file, "127.0.0.1 localhost\n")
	if err := os.Mkdir(f.sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(f.state, 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

// spec has the rootfs, a rw rbind, a ro rbind with a submount, a ro file
// bind and two non-bind mounts.
func (f *fixture) spec() *specs.Spec {
	return &specs.Spec{
		Root: &specs.Root{Path: "rootfs", Readonly: true},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/data", Type: "bind", Source: f.rw, Options: []string{"rbind", "rw"}},
			{Destination: "/conf", Type: "bind", Source: f.ro, Options: []string{"rbind", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: f.file, Options: []string{"bind", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs"},
		},
	}
}

// mountSub mounts a tmpfs at f.sub (a submount of the ro volume).
func (f *fixture) mountSub(t *testing.T) {
	t.Helper()
	if err := unix.Mount("tmpfs", f.sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(f.sub, unix.MNT_DETACH) })
	writeFile(t, filepath.Join(f.sub, "c"), "submount\n")
}

func newShared(t *testing.T, state string) *Shared {
	t.Helper()
	s, err := New(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func isEROFS(err error) bool { return errors.Is(err, unix.EROFS) }

func TestAddRemoveContainer(t *testing.T) {
	requireRoot(t)
	for _, api := range []string{"new", "old"} {
		t.Run(api+" mount api", func(t *testing.T) {
			if api == "old" {
				oldMountAPI.Store(true)
				defer oldMountAPI.Store(false)
			}
			ctx := context.Background()
			f := newFixture(t)
			f.mountSub(t)
			s := newShared(t, f.state)
			g, err := s.AddContainer(ctx, Container{ID: "c1", Spec: f.spec(), Bundle: f.bundle})
			if err != nil {
				t.Fatal(err)
			}
			if g.Root.Path != "/run/hull/shared/c1/rootfs" || g.Mounts[2].Source != "/run/hull/shared/c1/volumes/2-ro" {
				t.Errorf("guest spec: root %s, mounts %+v", g.Root.Path, g.Mounts)
			}
			// Everything is seen through shared/ as the guest would.
			d := filepath.Join(s.Dir(), "c1")
			if got := readFile(t, filepath.Join(d, "rootfs", "etc", "hello")); got != "from the image\n" {
				t.Errorf("rootfs file: %q", got)
			}
			if got := readFile(t, filepath.Join(d, "volumes", "3-hosts")); got != "127.0.0.1 localhost\n" {
				t.Errorf("file bind: %q", got)
			}
			if got := readFile(t, filepath.Join(d, "volumes", "2-ro", "sub", "c")); got != "submount\n" {
				t.Errorf("submount of the rbind: %q", got)
			}
			// Every mount the guest sees is nosuid,nodev, in shared/ as
			// in mounts/.
			for _, top := range []string{d, filepath.Join(s.mounts, "c1")} {
				requireNosuidNodev(t, top, 5)
			}
			// The root stays writable on the host (see doc.go).
			if err := os.WriteFile(filepath.Join(d, "rootfs", "new"), nil, 0o644); err != nil {
				t.Errorf("writing the rootfs: %v", err)
			}
			if err := os.WriteFile(filepath.Join(d, "volumes", "1-rw", "w"), []byte("x"), 0o644); err != nil {
				t.Errorf("writing the rw volume: %v", err)
			} else if got := readFile(t, filepath.Join(f.rw, "w")); got != "x" {
				t.Errorf("rw write not on the host: %q", got)
			}
			for _, p := range []string{"volumes/2-ro/b", "volumes/3-hosts"} {
				if err := os.WriteFile(filepath.Join(d, p), []byte("x"), 0o644); !isEROFS(err) {
					t.Errorf("writing %s: %v, want EROFS", p, err)
				}
			}
			// Read-only reaches submounts.
			err = os.WriteFile(filepath.Join(d, "volumes", "2-ro", "sub", "c"), []byte("x"), 0o644)
			if !isEROFS(err) {
				t.Errorf("writing the ro submount: %v, want EROFS", err)
			}
			// The guest cannot change the tree around the mounts.
			if err := os.Mkdir(filepath.Join(d, "evil"), 0o755); !isEROFS(err) {
				t.Errorf("mkdir at the top of shared/: %v, want EROFS", err)
			}

			if _, err := s.AddContainer(ctx, Container{ID: "c1", Spec: f.spec(), Bundle: f.bundle}); !errdefs.IsAlreadyExists(err) {
				t.Errorf("second add: %v", err)
			}
			if err := s.RemoveContainer(ctx, "c1"); err != nil {
				t.Fatal(err)
			}
			if left, _ := mountsUnder(f.state); len(left) != baseMounts {
				t.Errorf("after remove, mounts under the state dir: %v", left)
			}
			if _, err := os.Stat(filepath.Join(s.Dir(), "c1")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("container dir left: %v", err)
			}
			if err := s.RemoveContainer(ctx, "c1"); err != nil {
				t.Errorf("second remove: %v", err)
			}
			// Sources are untouched.
			if got := readFile(t, f.file); got != "127.0.0.1 localhost\n" {
				t.Errorf("source file: %q", got)
			}
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if left, _ := mountsUnder(f.state); len(left) != 0 {
				t.Errorf("after close: %v", left)
			}
			if ents, _ := os.ReadDir(f.state); len(ents) != 0 {
				t.Errorf("state dir not empty after close: %v", ents)
			}
		})
	}
}

func TestAddContainerErrors(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	f := newFixture(t)
	s := newShared(t, f.state)
	if err := os.Symlink("../..", filepath.Join(f.bundle, "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(f.bundle, "abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(f.file, filepath.Join(f.dir, "link")); err != nil {
		t.Fatal(err)
	}
	withRoot := func(p string) *specs.Spec { sp := f.spec(); sp.Root.Path = p; return sp }
	withMount := func(i int, src string) *specs.Spec { sp := f.spec(); sp.Mounts[i].Source = src; return sp }
	for _, tc := range []struct {
		name string
		c    Container
		want func(error) bool
	}{
		{"bad id", Container{ID: "../c", Spec: f.spec(), Bundle: f.bundle}, errdefs.IsInvalidArgument},
		{"root symlink up", Container{ID: "c", Spec: withRoot("up"), Bundle: f.bundle}, errdefs.IsInvalidArgument},
		{"root absolute symlink", Container{ID: "c", Spec: withRoot("abs/tmp"), Bundle: f.bundle}, errdefs.IsInvalidArgument},
		{"root dotdot", Container{ID: "c", Spec: withRoot("../ro"), Bundle: f.bundle}, errdefs.IsInvalidArgument},
		{"root missing", Container{ID: "c", Spec: withRoot("nope"), Bundle: f.bundle}, errdefs.IsNotFound},
		{"no root", Container{ID: "c", Spec: withRoot(""), Bundle: f.bundle}, errdefs.IsInvalidArgument},
		{"relative bundle", Container{ID: "c", Spec: f.spec(), Bundle: "bundle"}, errdefs.IsInvalidArgument},
		// The last volume fails: the ones before must be rolled back.
		{"missing source", Container{ID: "c", Spec: withMount(3, filepath.Join(f.dir, "nope")), Bundle: f.bundle},
			func(err error) bool { return errors.Is(err, os.ErrNotExist) }},
		{"symlink source", Container{ID: "c", Spec: withMount(3, filepath.Join(f.dir, "link")), Bundle: f.bundle}, errdefs.IsInvalidArgument},
		{"device source", Container{ID: "c", Spec: withMount(3, "/dev/null"), Bundle: f.bundle}, errdefs.IsInvalidArgument},
		{"hook", Container{ID: "c", Spec: func() *specs.Spec {
			sp := f.spec()
			sp.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/x"}}}
			return sp
		}(), Bundle: f.bundle}, errdefs.IsNotImplemented},
		{"bad rootfs mount", Container{ID: "c", Spec: f.spec(), Bundle: f.bundle, Rootfs: []Mount{
			{Type: "bind", Source: filepath.Join(f.bundle, "rootfs"), Options: []string{"rbind"}},
			{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/nonexistent"}},
		}}, func(err error) bool { return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.AddContainer(ctx, tc.c)
			if !tc.want(err) {
				t.Fatalf("got %v", err)
			}
			t.Log(err)
			if left, _ := mountsUnder(f.state); len(left) != baseMounts {
				t.Errorf("mounts left: %v", left)
			}
			if ents, _ := os.ReadDir(s.Dir()); len(ents) != 0 {
				t.Errorf("left in shared/: %v", ents)
			}
		})
	}
	// The fixture itself is fine.
	if _, err := s.AddContainer(ctx, Container{ID: "c", Spec: f.spec(), Bundle: f.bundle}); err != nil {
		t.Fatal(err)
	}
}

func TestRootfsMounts(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	f := newFixture(t)
	s := newShared(t, f.state)
	lower := filepath.Join(f.bundle, "rootfs")
	upper, work := filepath.Join(f.dir, "upper"), filepath.Join(f.dir, "work")
	writeFile(t, filepath.Join(upper, "etc", "upper"), "upper\n")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	sp := f.spec()
	sp.Root.Path = "ignored"
	_, err := s.AddContainer(ctx, Container{ID: "c", Spec: sp, Bundle: f.bundle, Rootfs: []Mount{{
		Type: "overlay", Source: "overlay",
		Options: []string{"index=off", "lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(s.Dir(), "c", "rootfs")
	if readFile(t, filepath.Join(root, "etc", "hello")) != "from the image\n" || readFile(t, filepath.Join(root, "etc", "upper")) != "upper\n" {
		t.Error("overlay content not visible")
	}
	requireNosuidNodev(t, root, 1)
	writeFile(t, filepath.Join(root, "written"), "x")
	if readFile(t, filepath.Join(upper, "written")) != "x" {
		t.Error("write did not reach the upper dir")
	}
	if err := s.RemoveContainer(ctx, "c"); err != nil {
		t.Fatal(err)
	}
}

// requireNosuidNodev checks in /proc/self/mountinfo that the mounts at and
// under dir, at least min of them, all have nosuid and nodev among their
// per-mount options.
func requireNosuidNodev(t *testing.T, dir string, min int) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint options ...
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		p := unescapeMountinfo(f[4])
		if p != dir && !strings.HasPrefix(p, dir+"/") {
			continue
		}
		n++
		opts := map[string]bool{}
		for _, o := range strings.Split(f[5], ",") {
			opts[o] = true
		}
		if !opts["nosuid"] || !opts["nodev"] {
			t.Errorf("mount %s has options %s, want nosuid and nodev", p, f[5])
		}
	}
	if n < min {
		t.Errorf("%d mounts under %s, want at least %d", n, dir, min)
	}
}

func TestCleanupLeftovers(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	f := newFixture(t)
	s, err := New(ctx, f.state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddContainer(ctx, Container{ID: "c", Spec: f.spec(), Bundle: f.bundle}); err != nil {
		t.Fatal(err)
	}
	// A new shim finds the old tree.
	if _, err := New(ctx, f.state); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("new over leftovers: %v", err)
	}
	if err := Cleanup(ctx, f.state); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(f.state); len(ents) != 0 {
		t.Errorf("state dir not empty: %v", ents)
	}
}

// baseMounts is how many mounts New makes: mounts/, shared/ and staging/.
const baseMounts = 3
