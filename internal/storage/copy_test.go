package storage

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// copyTree makes a host tree like a CRI pod's: single files (hosts,
// resolv.conf), a configmap directory made of links as the kubelet makes
// it, and a link that points outside the directory.
func copyTree(t *testing.T) (bundle, dir string) {
	t.Helper()
	bundle = t.TempDir()
	dir = t.TempDir()
	write := func(p, s string, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "hosts"), "127.0.0.1 localhost\n", 0o644)
	write(filepath.Join(dir, "cm", "..2026_12_07", "key"), "value", 0o600)
	for _, l := range [][2]string{
		{"..2026_12_07", "cm/..data"},
		{"..data/key", "cm/key"},
		{"/etc/shadow", "cm/escape"},
	} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(bundle, "rel", "file"), "relative", 0o640)
	return bundle, dir
}

func TestCopyContainer(t *testing.T) {
	bundle, dir := copyTree(t)
	proc := specs.Mount{Destination: "/proc", Type: "proc", Source: "proc"}
	spec := &specs.Spec{
		Root: &specs.Root{Path: "rootfs"},
		Mounts: []specs.Mount{
			proc,
			{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(dir, "hosts"), Options: []string{"rbind", "ro"}},
			{Destination: "/etc/config", Type: "bind", Source: filepath.Join(dir, "cm"), Options: []string{"rbind", "ro"}},
			{Destination: "/rel", Source: "rel/file", Options: []string{"bind"}},
			{Destination: "/dev/shm", Type: "bind", Source: "/run/hull/shm", Options: []string{"rbind"}},
		},
	}
	g, files, err := CopyContainer("c1", spec, bundle, []int{4}, DefaultCopyLimits)
	if err != nil {
		t.Fatal(err)
	}
	if g.Root.Path != GuestBlockRootfs("c1") {
		t.Errorf("root.path %q, want %q", g.Root.Path, GuestBlockRootfs("c1"))
	}
	wantSrc := []string{"proc", "/run/hull/copied/c1/1-hosts", "/run/hull/copied/c1/2-cm", "/run/hull/copied/c1/3-file", "/run/hull/shm"}
	for i, m := range g.Mounts {
		if m.Source != wantSrc[i] {
			t.Errorf("mount %d source %q, want %q", i, m.Source, wantSrc[i])
		}
	}
	if spec.Mounts[1].Source != filepath.Join(dir, "hosts") {
		t.Error("the caller's spec was changed")
	}
	type entry struct {
		kind CopyKind
		mode uint32
		data string
		link string
	}
	want := map[string]entry{
		"1-hosts":               {CopyRegular, 0o644, "127.0.0.1 localhost\n", ""},
		"2-cm":                  {CopyDirectory, 0o755, "", ""},
		"2-cm/..2026_12_07":     {CopyDirectory, 0o755, "", ""},
		"2-cm/..2026_12_07/key": {CopyRegular, 0o600, "value", ""},
		"2-cm/..data":           {CopySymlink, 0o777, "", "..2026_12_07"},
		"2-cm/escape":           {CopySymlink, 0o777, "", "/etc/shadow"},
		"2-cm/key":              {CopySymlink, 0o777, "", "..data/key"},
		"3-file":                {CopyRegular, 0o640, "relative", ""},
	}
	seen := map[string]bool{}
	for _, f := range files {
		w, ok := want[f.Path]
		if !ok {
			t.Errorf("unexpected copy %q", f.Path)
			continue
		}
		seen[f.Path] = true
		if parent := filepath.Dir(f.Path); parent != "." && !seen[parent] {
			t.Errorf("%q comes before its parent", f.Path)
		}
		if f.Kind != w.kind || f.Mode != w.mode || string(f.Data) != w.data || f.Link != w.link {
			t.Errorf("%q: got kind %d mode %#o data %q link %q, want %+v", f.Path, f.Kind, f.Mode, f.Data, f.Link, w)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("copied %d entries, want %d", len(seen), len(want))
	}
}

func TestCopyContainerRefuses(t *testing.T) {
	bundle, dir := copyTree(t)
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 2048), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "null")
	if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	withDev := filepath.Join(dir, "withdev")
	if err := os.MkdirAll(withDev, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(withDev, "zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
		t.Fatal(err)
	}
	// deep holds maxCopyDepth+1 nested directories (deep itself and
	// maxCopyDepth below it).
	deep := filepath.Join(dir, "deep")
	if err := os.MkdirAll(filepath.Join(deep, strings.Repeat("d/", maxCopyDepth)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..", filepath.Join(bundle, "up")); err != nil {
		t.Fatal(err)
	}
	small := CopyLimits{Total: 1 << 20, File: 1024, Entries: 1024}
	for _, tc := range []struct {
		name, source string
		lim          CopyLimits
		want         string
	}{
		{"file over the file limit", big, small, "larger than 1024 bytes"},
		{"file over the total", big, CopyLimits{Total: 1000, File: 1 << 20, Entries: 10}, "more than 1000 bytes"},
		{"directory over the entry limit", filepath.Join(dir, "cm"), CopyLimits{Total: 1 << 20, File: 1 << 20, Entries: 3}, "more than 3 files"},
		{"fifo", fifo, small, "a FIFO"},
		{"device", dev, small, "a character device"},
		{"socket", sock, small, "a socket"},
		{"device in a directory", withDev, small, "a character device"},
		{"symbolic link as the source", filepath.Join(dir, "cm", "key"), small, "symbolic link"},
		{"too deep", deep, small, "nested deeper"},
		{"missing", filepath.Join(dir, "nothing"), small, "no such file"},
		{"relative escape", "../../etc/passwd", small, "escapes the bundle"},
		{"relative parent", "..", small, "escapes the bundle"},
		{"relative parent with a slash", "../", small, "escapes the bundle"},
		{"relative parent through a name", "x/../..", small, "escapes the bundle"},
		{"relative link as the source", "up", small, "symbolic link"},
		{"relative link out in the middle", "up/x", small, "escapes the bundle"},
		{"trailing slash", filepath.Join(dir, "cm") + "/", small, "clean form"},
		{"dot", filepath.Join(dir, "cm") + "/.", small, "clean form"},
		{"procfs", "/proc/self/environ", small, "procfs"},
		{"procfs directory", "/proc/self/fd", small, "procfs"},
		{"sysfs", "/sys/kernel/notes", small, "sysfs"},
		{"cgroup", "/sys/fs/cgroup", small, "not copied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
				{Destination: "/x", Type: "bind", Source: tc.source, Options: []string{"rbind", "ro"}},
			}}
			_, files, err := CopyContainer("c1", spec, bundle, nil, tc.lim)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v (%d files), want an error with %q", err, len(files), tc.want)
			}
			if !strings.Contains(err.Error(), "bind mount 0 (/x)") {
				t.Errorf("error %q does not name the mount", err)
			}
			if tc.name != "missing" && !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v: want invalid argument", err)
			}
		})
	}
}

// TestCopyWritable: a writable directory is refused (its copy would drop
// the writes), naming shared_fs; a writable file, as CRI's
// /dev/termination-log, and a read-only directory are copied.
func TestCopyWritable(t *testing.T) {
	bundle, dir := copyTree(t)
	for _, tc := range []struct {
		source string
		opts   []string
		ok     bool
	}{
		{filepath.Join(dir, "cm"), []string{"rbind", "rw"}, false},
		{filepath.Join(dir, "cm"), []string{"rbind"}, false},
		{filepath.Join(dir, "cm"), []string{"rbind", "ro"}, true},
		{filepath.Join(dir, "hosts"), []string{"rbind", "rw"}, true},
	} {
		spec := &specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
			{Destination: "/x", Type: "bind", Source: tc.source, Options: tc.opts},
		}}
		_, files, err := CopyContainer("c1", spec, bundle, nil, DefaultCopyLimits)
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s %v: %v", tc.source, tc.opts, err)
		case tc.ok && len(files) == 0:
			t.Errorf("%s %v: nothing copied", tc.source, tc.opts)
		case !tc.ok && (!errdefs.IsNotImplemented(err) || !strings.Contains(fmt.Sprint(err), "shared_fs")):
			t.Errorf("%s %v: %v, want a not-implemented error naming shared_fs", tc.source, tc.opts, err)
		}
	}
}

// TestCopyDepth: a source of maxCopyDepth nested directories is copied,
// one of maxCopyDepth+1 is refused.
func TestCopyDepth(t *testing.T) {
	bundle, dir := copyTree(t)
	for _, n := range []int{maxCopyDepth, maxCopyDepth + 1} {
		top := filepath.Join(dir, fmt.Sprint("deep", n))
		if err := os.MkdirAll(filepath.Join(top, strings.Repeat("d/", n-1)), 0o755); err != nil {
			t.Fatal(err)
		}
		spec := &specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
			{Destination: "/x", Type: "bind", Source: top, Options: []string{"rbind", "ro"}},
		}}
		_, files, err := CopyContainer("c1", spec, bundle, nil, DefaultCopyLimits)
		if n == maxCopyDepth && (err != nil || len(files) != n) {
			t.Errorf("%d levels: %v, %d entries; want %d copied", n, err, len(files), n)
		}
		if n > maxCopyDepth && (err == nil || !strings.Contains(err.Error(), "nested deeper")) {
			t.Errorf("%d levels: %v, want refused", n, err)
		}
	}
}

// TestCopyReadsWhatItOpened: the file copied is the object the source's
// descriptor holds, never what its path names later: a regular file
// replaced by a FIFO (or a device) after it was opened is still read as
// the file, and nothing opens the FIFO.
func TestCopyReadsWhatItOpened(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Close(fd) }()
	c := copier{lim: DefaultCopyLimits}
	st, err := c.stat(fd, "f")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	c.mnt = st.Mnt_id
	if err := c.node(fd, st, "f", 0); err != nil {
		t.Fatal(err)
	}
	if len(c.files) != 1 || string(c.files[0].Data) != "data" || c.files[0].Kind != CopyRegular {
		t.Fatalf("copied %+v, want the file opened", c.files)
	}
}

// TestCopySubmount: a plain bind shows a mount below its source as its
// (empty) mount point; rbind shows the mount's files.
func TestCopySubmount(t *testing.T) {
	requireRoot(t)
	bundle := t.TempDir()
	dir := testDir(t)
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Unmount(sub, unix.MNT_DETACH) }()
	if err := os.WriteFile(filepath.Join(sub, "inner"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, opt := range []string{"bind", "rbind"} {
		spec := &specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
			{Destination: "/x", Type: "bind", Source: dir, Options: []string{opt, "ro"}},
		}}
		_, files, err := CopyContainer("c1", spec, bundle, nil, DefaultCopyLimits)
		if err != nil {
			t.Fatalf("%s: %v", opt, err)
		}
		var paths []string
		for _, f := range files {
			paths = append(paths, f.Path)
		}
		want := "0-" + filepath.Base(dir) + ",0-" + filepath.Base(dir) + "/sub"
		if opt == "rbind" {
			want += ",0-" + filepath.Base(dir) + "/sub/inner"
		}
		if got := strings.Join(paths, ","); got != want {
			t.Errorf("%s: copied %s, want %s", opt, got, want)
		}
	}
}
