package storage

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestEmptyDirName(t *testing.T) {
	const (
		pods = "/var/lib/kubelet/pods"
		uid  = "6f0b2c1e-8a4d-4c1b-9e0f-1a2b3c4d5e6f"
		dir  = pods + "/" + uid + "/volumes/kubernetes.io~empty-dir/"
	)
	for _, tc := range []struct {
		name, source, uid string
		want              string
	}{
		{"emptyDir", dir + "scratch", uid, "scratch"},
		{"dashes and digits", dir + "cache-1", uid, "cache-1"},
		{"static pod uid", pods + "/0123456789abcdef0123456789abcdef/volumes/kubernetes.io~empty-dir/x", "0123456789abcdef0123456789abcdef", "x"},
		{"another pod's", dir + "scratch", "00000000-8a4d-4c1b-9e0f-1a2b3c4d5e6f", ""},
		{"no pod uid", dir + "scratch", "", ""},
		{"uid with a slash", pods + "/a/b/volumes/kubernetes.io~empty-dir/x", "a/b", ""},
		{"uid dot-dot", pods + "/../volumes/kubernetes.io~empty-dir/x", "..", ""},
		{"configmap", pods + "/" + uid + "/volumes/kubernetes.io~configmap/cfg", uid, ""},
		{"host path elsewhere", "/data/kubernetes.io~empty-dir/scratch", uid, ""},
		{"prefix elsewhere", "/x" + dir + "scratch", uid, ""},
		{"trailing slash", dir + "scratch/", uid, ""},
		{"below the volume", dir + "scratch/sub", uid, ""},
		{"dot-dot", dir + "..", uid, ""},
		{"dot-dot out", dir + "../../../../etc", uid, ""},
		{"double slash", pods + "//" + uid + "/volumes/kubernetes.io~empty-dir/scratch", uid, ""},
		{"dot component", pods + "/" + uid + "/./volumes/kubernetes.io~empty-dir/scratch", uid, ""},
		{"upper case", dir + "Scratch", uid, ""},
		{"leading dash", dir + "-x", uid, ""},
		{"too long", dir + "a234567890123456789012345678901234567890123456789012345678901234", uid, ""},
		{"empty name", dir, uid, ""},
		{"subPath bind", pods + "/" + uid + "/volume-subpaths/scratch/app/0", uid, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := EmptyDirName(pods, tc.source, tc.uid)
			if got != tc.want || ok != (tc.want != "") {
				t.Errorf("EmptyDirName(%q, %q) = %q, %v; want %q", tc.source, tc.uid, got, ok, tc.want)
			}
		})
	}
}

// kubeletPod makes a kubelet-style pod directory with emptyDir volumes
// names below a temporary pods directory.
func kubeletPod(t *testing.T, uid string, names ...string) (pods string) {
	t.Helper()
	pods = t.TempDir()
	for _, n := range names {
		p := filepath.Join(pods, uid, "volumes", emptyDirPlugin, n)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	return pods
}

func TestLocalEmptyDirs(t *testing.T) {
	const uid = "pod-1"
	pods := kubeletPod(t, uid, "scratch", "cache")
	// The pod's fsGroup: group-owned, set-group-ID.
	fsg := filepath.Join(pods, uid, "volumes", emptyDirPlugin, "cache")
	if err := os.Chown(fsg, 0, 2000); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(fsg, 0o2777|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	src := func(n string) string { return filepath.Join(pods, uid, "volumes", emptyDirPlugin, n) }
	shm := specs.Mount{Destination: "/dev/shm", Type: "bind", Source: "/run/hull/shm", Options: []string{"rbind"}}
	spec := &specs.Spec{Mounts: []specs.Mount{
		shm,
		{Destination: "/work", Type: "bind", Source: src("scratch"), Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/sandboxes/p/hosts", Options: []string{"rbind", "ro"}},
		{Destination: "/cache", Type: "bind", Source: src("cache"), Options: []string{"rbind", "rw"}},
		{Destination: "/again", Type: "bind", Source: src("scratch"), Options: []string{"rbind", "ro"}},
		{Destination: "/tmpfs", Type: "tmpfs", Source: src("scratch")},
	}}
	orig := spec.Mounts[1].Source
	g, gm, dirs, err := LocalEmptyDirs(pods, spec, uid, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Mounts[1].Source != orig {
		t.Errorf("the caller's spec changed: %q", spec.Mounts[1].Source)
	}
	wantSrc := []string{"/run/hull/shm", "/run/hull/emptydir/scratch", "/var/lib/containerd/sandboxes/p/hosts", "/run/hull/emptydir/cache", "/run/hull/emptydir/scratch", src("scratch")}
	for i, m := range g.Mounts {
		if m.Source != wantSrc[i] {
			t.Errorf("mount %d (%s): source %q, want %q", i, m.Destination, m.Source, wantSrc[i])
		}
	}
	if !reflect.DeepEqual(gm, []int{0, 1, 3, 4}) {
		t.Errorf("guest mounts %v, want [0 1 3 4]", gm)
	}
	want := []EmptyDir{{Name: "scratch", Mode: 0o777}, {Name: "cache", Mode: 0o2777, GID: 2000}}
	if !reflect.DeepEqual(dirs, want) {
		t.Errorf("emptyDirs %+v, want %+v", dirs, want)
	}
	// The guest spec that CopyContainer makes of it copies nothing of
	// the volumes: they are guest mounts.
	if _, files, err := CopyContainer("c1", &specs.Spec{Mounts: g.Mounts[:2]}, t.TempDir(), gm[:2], DefaultCopyLimits); err != nil || len(files) != 0 {
		t.Errorf("copying: %d files, %v; want none", len(files), err)
	}

	t.Run("another pod", func(t *testing.T) {
		g, gm, dirs, err := LocalEmptyDirs(pods, spec, "pod-2", nil)
		if err != nil || g != spec || gm != nil || dirs != nil {
			t.Errorf("got %v, %v, %v; want the spec unchanged and no volumes", gm, dirs, err)
		}
	})
	t.Run("no pod", func(t *testing.T) {
		g, _, dirs, err := LocalEmptyDirs(pods, spec, "", nil)
		if err != nil || g != spec || dirs != nil {
			t.Errorf("got %v, %v; want the spec unchanged", dirs, err)
		}
	})
}

// TestLocalEmptyDirsLinks: the kubelet's directories are opened without
// following a link anywhere, the pods directory's own path included; a
// link is an invalid-argument error naming the mount, a directory that is
// missing a not-found one.
func TestLocalEmptyDirsLinks(t *testing.T) {
	const uid = "pod-1"
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, pods string)
		class func(error) bool
	}{
		{"volume is a link", func(t *testing.T, pods string) {
			mkdirs(t, filepath.Join(pods, uid, "volumes", emptyDirPlugin))
			symlink(t, "/etc", filepath.Join(pods, uid, "volumes", emptyDirPlugin, "scratch"))
		}, errdefs.IsInvalidArgument},
		{"plugin directory is a link", func(t *testing.T, pods string) {
			mkdirs(t, filepath.Join(pods, "elsewhere", "scratch"))
			mkdirs(t, filepath.Join(pods, uid, "volumes"))
			symlink(t, filepath.Join(pods, "elsewhere"), filepath.Join(pods, uid, "volumes", emptyDirPlugin))
		}, errdefs.IsInvalidArgument},
		{"pod directory is a link", func(t *testing.T, pods string) {
			mkdirs(t, filepath.Join(pods, "other", "volumes", emptyDirPlugin, "scratch"))
			symlink(t, "other", filepath.Join(pods, uid))
		}, errdefs.IsInvalidArgument},
		{"volume is a file", func(t *testing.T, pods string) {
			mkdirs(t, filepath.Join(pods, uid, "volumes", emptyDirPlugin))
			if err := os.WriteFile(filepath.Join(pods, uid, "volumes", emptyDirPlugin, "scratch"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, errdefs.IsInvalidArgument},
		{"missing", func(*testing.T, string) {}, func(err error) bool {
			return errdefs.IsNotFound(err) && errors.Is(err, os.ErrNotExist)
		}},
		// The kubelet root (the operator's) is opened without following a
		// link either.
		{"pods directory reached through a link", func(t *testing.T, pods string) {
			real := pods + ".real"
			mkdirs(t, filepath.Join(real, uid, "volumes", emptyDirPlugin, "scratch"))
			t.Cleanup(func() { _ = os.RemoveAll(real) })
			if err := os.Remove(pods); err != nil {
				t.Fatal(err)
			}
			symlink(t, real, pods)
		}, errdefs.IsInvalidArgument},
		{"pods directory missing", func(t *testing.T, pods string) {
			if err := os.Remove(pods); err != nil {
				t.Fatal(err)
			}
		}, errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pods := filepath.Join(t.TempDir(), "pods")
			mkdirs(t, pods)
			tc.setup(t, pods)
			spec := &specs.Spec{Mounts: []specs.Mount{{
				Destination: "/work", Type: "bind", Options: []string{"rbind"},
				Source: filepath.Join(pods, uid, "volumes", emptyDirPlugin, "scratch"),
			}}}
			_, _, _, err := LocalEmptyDirs(pods, spec, uid, nil)
			if err == nil || !tc.class(err) {
				t.Fatalf("got %v, want an error of the right class", err)
			}
		})
	}
}

// TestLocalEmptyDirsMemory: a tmpfs mounted on the volume (medium Memory)
// gives its size; a volume directory on a tmpfs it is not the root of
// gives none.
func TestLocalEmptyDirsMemory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it mounts a tmpfs")
	}
	const uid = "pod-1"
	pods := kubeletPod(t, uid, "mem", "tmp")
	mem := filepath.Join(pods, uid, "volumes", emptyDirPlugin, "mem")
	if err := unix.Mount("tmpfs", mem, "tmpfs", 0, "size=8m,mode=0777"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mem, unix.MNT_DETACH) })
	// A kubelet root on a tmpfs: the volume is a plain directory in it.
	tmp := filepath.Join(pods, uid, "volumes", emptyDirPlugin, "tmp")
	if err := unix.Mount("tmpfs", tmp, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(tmp, unix.MNT_DETACH) })
	mkdirs(t, filepath.Join(tmp, "sub"))
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/mem", Type: "bind", Source: mem, Options: []string{"rbind"}},
	}}
	_, _, dirs, err := LocalEmptyDirs(pods, spec, uid, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != 1 || dirs[0].Size != 8<<20 || dirs[0].Mode != 0o777 {
		t.Errorf("got %+v, want one of 8 MiB, mode 0777", dirs)
	}
	d, err := statEmptyDir(pods, uid, "tmp/sub")
	if err != nil {
		t.Fatal(err)
	}
	if d.Size != 0 {
		t.Errorf("a directory inside a tmpfs: size %d, want 0", d.Size)
	}
}

// TestLocalEmptyDirsOtherMedium: a volume whose directory is the root of
// a mount of another file system than tmpfs (hugetlbfs for medium
// HugePages; ramfs stands in for it here) is refused as not implemented,
// not silently made a plain tmpfs.
func TestLocalEmptyDirsOtherMedium(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it mounts a ramfs")
	}
	const uid = "pod-1"
	pods := kubeletPod(t, uid, "huge")
	huge := filepath.Join(pods, uid, "volumes", emptyDirPlugin, "huge")
	if err := unix.Mount("ramfs", huge, "ramfs", 0, "mode=0777"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(huge, unix.MNT_DETACH) })
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/huge", Type: "bind", Source: huge, Options: []string{"rbind"}},
	}}
	if _, _, dirs, err := LocalEmptyDirs(pods, spec, uid, nil); !errdefs.IsNotImplemented(err) {
		t.Errorf("got %+v, %v; want a not-implemented error", dirs, err)
	}
}

func mkdirs(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// TestKubeletRootDir: the pods directory follows the kubelet's root
// directory: a volume is recognised below a custom root (k0s's) and
// only there.
func TestKubeletRootDir(t *testing.T) {
	if got := KubeletPodsDir(DefaultKubeletRootDir); got != "/var/lib/kubelet/pods" {
		t.Errorf("default pods directory %q", got)
	}
	const uid = "0b9e6a3c-5f0e-4c8e-9d7a-1a2b3c4d5e6f"
	k0s := KubeletPodsDir("/var/lib/k0s/kubelet")
	src := "/var/lib/k0s/kubelet/pods/" + uid + "/volumes/" + emptyDirPlugin + "/scratch"
	if n, ok := EmptyDirName(k0s, src, uid); !ok || n != "scratch" {
		t.Errorf("under the k0s root: %q, %v; want scratch", n, ok)
	}
	if n, ok := EmptyDirName(KubeletPodsDir(DefaultKubeletRootDir), src, uid); ok {
		t.Errorf("a k0s source recognised under the default root as %q", n)
	}
	dflt := "/var/lib/kubelet/pods/" + uid + "/volumes/" + emptyDirPlugin + "/scratch"
	if n, ok := EmptyDirName(k0s, dflt, uid); ok {
		t.Errorf("a default-root source recognised under the k0s root as %q", n)
	}

	// End to end below a custom root directory.
	root := filepath.Join(t.TempDir(), "var", "lib", "k0s", "kubelet")
	pods := KubeletPodsDir(root)
	mkdirs(t, filepath.Join(pods, uid, "volumes", emptyDirPlugin, "scratch"))
	spec := &specs.Spec{Mounts: []specs.Mount{{
		Destination: "/work", Type: "bind", Options: []string{"rbind"},
		Source: filepath.Join(pods, uid, "volumes", emptyDirPlugin, "scratch"),
	}}}
	g, gm, dirs, err := LocalEmptyDirs(pods, spec, uid, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g.Mounts[0].Source != GuestEmptyDir("scratch") || len(gm) != 1 || len(dirs) != 1 || dirs[0].Name != "scratch" {
		t.Errorf("got source %q, guest mounts %v, volumes %+v; want the guest's scratch volume", g.Mounts[0].Source, gm, dirs)
	}
	// The same spec with the default pods directory is left alone.
	if g, _, dirs, err := LocalEmptyDirs(KubeletPodsDir(DefaultKubeletRootDir), spec, uid, nil); err != nil || g != spec || dirs != nil {
		t.Errorf("default root: %+v, %v; want the spec unchanged", dirs, err)
	}
}
