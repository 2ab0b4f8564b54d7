package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/storage"
)

// erofsImage packs dir into an erofs image file, as containerd's erofs
// snapshotter keeps a layer.
func erofsImage(t *testing.T, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Fatalf("mkfs.erofs not found (apt-get install erofs-utils): %v", err)
	}
	img := filepath.Join(t.TempDir(), "layer.erofs")
	if out, err := exec.Command("mkfs.erofs", img, dir).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs: %v: %s", err, out)
	}
	return img
}

// emptyExt4 makes the writable layer's image as containerd's mount manager
// formats it for the erofs snapshotter (default_size).
func emptyExt4(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "rwlayer.img")
	e2e.MakeExt4(t, img, "32M", "")
	return img
}

// erofsMounts is the mount list containerd's erofs snapshotter gives for
// layers (uppermost first) and, when rw is not "", the writable layer.
func erofsMounts(rw string, layers ...string) []storage.Mount {
	var ms []storage.Mount
	first := 0
	if rw != "" {
		ms = append(ms, storage.Mount{Type: "ext4", Source: rw, Options: []string{"rw", "loop"}})
		first = 1
	}
	for _, l := range layers {
		ms = append(ms, storage.Mount{Type: "erofs", Source: l, Options: []string{"ro", "loop"}})
	}
	if rw == "" && len(layers) == 1 {
		return ms
	}
	lower := "{{ overlay " + strconv.Itoa(first) + " " + strconv.Itoa(len(ms)-1) + " }}"
	if len(layers) == 1 {
		lower = "{{ mount " + strconv.Itoa(first) + " }}"
	}
	opts := []string{"lowerdir=" + lower}
	if rw != "" {
		opts = append([]string{
			"X-containerd.mkdir.path={{ mount 0 }}/upper:0755", "X-containerd.mkdir.path={{ mount 0 }}/work:0755",
			"workdir={{ mount 0 }}/work", "upperdir={{ mount 0 }}/upper"}, opts...)
	}
	return append(ms, storage.Mount{Type: "format/mkdir/overlay", Source: "overlay", Options: opts})
}

// debugfs runs a debugfs request on an ext4 image on the host (without
// mounting it).
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).Output()
	if err != nil {
		t.Fatalf("debugfs %s: %v", req, err)
	}
	return string(out)
}

// TestErofsRootfs runs containers whose root comes as containerd's erofs
// snapshotter lists it: every layer image is hot-added as a read-only
// virtio-blk disk, the writable layer's ext4 image as a read-write one, and
// the agent stacks the overlay; the host mounts nothing and makes no loop
// device. Disks beyond the VM's hotplug ports, a host upper directory and a
// create that fails in the guest are refused and leave no disk behind.
func TestErofsRootfs(t *testing.T) {
	c := containerConfig(t)
	c.Hypervisor.QEMU.HotplugDisks = 3
	sb := startSandbox(t, c, "erofs")

	bundle, _ := busyboxBundle(t, "true")
	// The bottom layer: busybox, a file the top layer shadows and one the
	// container deletes. The top layer: the shadowing file.
	bottomDir := filepath.Join(bundle, "rootfs")
	for name, content := range map[string]string{"shadowed": "bottom\n", "doomed": "doomed\n"} {
		if err := os.WriteFile(filepath.Join(bottomDir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	topDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(topDir, "shadowed"), []byte("top\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bottom, top := erofsImage(t, bottomDir), erofsImage(t, topDir)
	images := []string{bottom, top}

	run := func(t *testing.T, id string, rootfs []storage.Mount, args ...string) (result, error) {
		t.Helper()
		return runOnRoot(t, sb, c.Runtime.StateDir, id, rootfs, args...)
	}
	noLoops := func(t *testing.T, imgs ...string) {
		t.Helper()
		out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "BACK-FILE").CombinedOutput()
		if err != nil {
			t.Fatalf("losetup: %v: %s", err, out)
		}
		for _, img := range imgs {
			if strings.Contains(string(out), img) {
				t.Errorf("a loop device on the host for %s", img)
			}
		}
	}

	t.Run("more disks than hotplug ports refused", func(t *testing.T) {
		_, err := run(t, "erofs-many", erofsMounts(emptyExt4(t), top, top, bottom), "true")
		if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "hotplug_disks") {
			t.Errorf("4 disks on 3 ports: got %v, want class %v naming hotplug_disks", err, errdefs.ErrResourceExhausted)
		}
	})
	t.Run("writable layer a host directory refused", func(t *testing.T) {
		rootfs := []storage.Mount{
			{Type: "erofs", Source: bottom, Options: []string{"ro", "loop"}},
			{Type: "format/mkdir/overlay", Source: "overlay", Options: []string{"workdir=" + t.TempDir(), "upperdir=" + t.TempDir(), "lowerdir={{ mount 0 }}"}},
		}
		if _, err := run(t, "erofs-hostdir", rootfs, "true"); !errors.Is(err, errdefs.ErrNotImplemented) || !strings.Contains(err.Error(), "default_size") {
			t.Errorf("got %v, want class %v naming default_size", err, errdefs.ErrNotImplemented)
		}
	})
	t.Run("a layer the guest cannot mount unplugs every disk", func(t *testing.T) {
		// An ext4 image named as an erofs layer: the three disks are
		// in when the guest's erofs refuses it; the create's undo
		// unplugs them all (the next case needs every port).
		_, err := run(t, "erofs-bad", erofsMounts(emptyExt4(t), emptyExt4(t), bottom), "true")
		if err == nil {
			t.Fatal("an ext4 image mounted as an erofs layer")
		}
		t.Logf("refused as expected: %v", err)
	})

	t.Run("writable root over two layers", func(t *testing.T) {
		// Needs all 3 ports: the refused creates above freed theirs.
		rw := emptyExt4(t)
		r, err := run(t, "erofs-rw", erofsMounts(rw, top, bottom), "sh", "-c",
			"cat /shadowed && echo written > /new && cat /new && rm /doomed && test ! -e /doomed && grep ' / ' /proc/mounts && cat /sys/block/vd*/ro | sort | tr '\\n' ' '")
		if err != nil {
			t.Fatal(err)
		}
		if r.status != 0 || !strings.HasPrefix(r.stdout, "top\nwritten\n") ||
			!regexp.MustCompile(`(?m)^overlay / overlay rw[, ]`).MatchString(r.stdout) || !strings.HasSuffix(r.stdout, "0 1 1 ") {
			t.Fatalf("status %d, stdout %q, stderr %q: want the top layer's file, the write read back, / an rw overlay, two read-only disks and a writable one", r.status, r.stdout, r.stderr)
		}
		if got := debugfs(t, rw, "cat /upper/new"); got != "written\n" {
			t.Errorf("writable layer holds %q in /upper/new, want the guest's write", got)
		}
		if got := debugfs(t, rw, "stat /upper/doomed"); !strings.Contains(got, "Type: character special") {
			t.Errorf("writable layer's /upper/doomed: %q, want the overlay's whiteout (a character device)", got)
		}
		noLoops(t, append(images, rw)...)
	})
	t.Run("a view of one layer is a read-only erofs root", func(t *testing.T) {
		r, err := run(t, "erofs-view", erofsMounts("", bottom), "sh", "-c", "grep ' / ' /proc/mounts; cat /shadowed; echo x > /new")
		if err != nil {
			t.Fatal(err)
		}
		if r.status == 0 || !regexp.MustCompile(`(?m)^/dev/vd[a-z]+ / erofs ro[, ]`).MatchString(r.stdout) ||
			!strings.Contains(r.stdout, "bottom\n") || !strings.Contains(r.stderr, "Read-only file system") {
			t.Errorf("status %d, stdout %q, stderr %q: want / on /dev/vdX erofs ro and the write refused", r.status, r.stdout, r.stderr)
		}
	})
	t.Run("two layers without a writable one stay read-only", func(t *testing.T) {
		r, err := run(t, "erofs-ro", erofsMounts("", top, bottom), "sh", "-c", "cat /shadowed; echo x > /new")
		if err != nil {
			t.Fatal(err)
		}
		if r.status == 0 || r.stdout != "top\n" || !strings.Contains(r.stderr, "Read-only file system") {
			t.Errorf("status %d, stdout %q, stderr %q: want the top layer's file and the write refused", r.status, r.stdout, r.stderr)
		}
	})
	noLoops(t, images...)
}
