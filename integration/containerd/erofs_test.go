package containerd

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// erofsSnapshotter is containerd 2.x's built-in snapshotter whose layers
// are erofs image files; with default_size its writable layers are ext4
// image files.
const erofsSnapshotter = "erofs"

// startErofsDaemon starts a containerd 2.x whose erofs snapshotter keeps
// every container's writable layer in an ext4 image of 64 MiB, and imports
// the busybox image into it.
func startErofsDaemon(t *testing.T) *daemon {
	t.Helper()
	for _, tool := range []string{"mkfs.erofs", "mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (apt-get install erofs-utils e2fsprogs): %v", tool, err)
		}
	}
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemonWith(t, containerdPath, ctrPath, daemonOptions{containerd: `[plugins."io.containerd.snapshotter.v1.erofs"]
  default_size = "64M"
`})
	d.mustCtr(t, "images", "import", "--local", "--snapshotter", erofsSnapshotter, env.image)
	return d
}

// writableLayerHolding returns the writable layer images of the erofs
// snapshotter below root whose upper directory holds name.
func writableLayerHolding(t *testing.T, root, name string) []string {
	t.Helper()
	imgs, err := filepath.Glob(filepath.Join(root, "io.containerd.snapshotter.v1.erofs", "snapshots", "*", "rwlayer.img"))
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, img := range imgs {
		out, _ := exec.Command("debugfs", "-R", "cat /upper/"+name, img).Output()
		if strings.Contains(string(out), name) {
			found = append(found, img)
		}
	}
	return found
}

// TestErofsSnapshotter runs containers whose root comes from containerd
// 2.x's erofs snapshotter: hull claims the erofs mounts from containerd's
// mount manager (`-info`), hot-adds each layer as a read-only virtio-blk
// disk and the writable layer's ext4 image as a read-write one, and the
// guest stacks the overlay; the host makes no loop device and no mount for
// the container.
func TestErofsSnapshotter(t *testing.T) {
	d := startErofsDaemon(t)
	run := func(t *testing.T, args ...string) (string, string, int) {
		t.Helper()
		return d.ctr(t, append([]string{"run", "--snapshotter", erofsSnapshotter, "--runtime", runtimeName}, args...)...)
	}
	// The image's layers (committed at import) keep no loop device.
	if l := loopDevicesOf(t, d.dir); len(l) > 0 {
		t.Fatalf("loop devices after the import: %v", l)
	}
	overlayRW := regexp.MustCompile(`(?m)^overlay / overlay rw[, ]`)

	t.Run("run: the layer a read-only disk, writes in the writable layer", func(t *testing.T) {
		defer d.checkClean(t)
		out, errOut, code := run(t, "--rm", imageName, "erofs-one",
			"sh", "-c", "echo written > /new && cat /new && grep ' / ' /proc/mounts && cat /sys/block/vd*/ro | sort | tr '\\n' ' '")
		if code != 0 || !strings.HasPrefix(out, "written\n") || !overlayRW.MatchString(out) || !strings.HasSuffix(out, "0 1 ") {
			t.Fatalf("got exit %d, stdout %q, stderr %q; want the file read back, / an rw overlay, one read-only disk (the layer) and a writable one", code, out, errOut)
		}
		if l := loopDevicesOf(t, d.dir); len(l) > 0 {
			t.Errorf("loop devices left on the host: %v", l)
		}
		// --rm removed the container's snapshot.
		if out := d.mustCtr(t, "snapshots", "--snapshotter", erofsSnapshotter, "ls"); strings.Contains(out, "Active") {
			t.Errorf("an active snapshot left:\n%s", out)
		}
	})

	t.Run("the container's writes persist in its layer while it lives; exec", func(t *testing.T) {
		defer d.checkClean(t)
		const id = "erofs-live"
		if _, errOut, code := run(t, "-d", imageName, id, "sleep", "600"); code != 0 {
			t.Fatalf("run -d: exit %d: %s", code, errOut)
		}
		defer d.forget(t, id)
		// Neither containerd (its mount manager's targets, the bundle)
		// nor its snapshotter mounts anything for the container.
		for _, dir := range []string{filepath.Join(d.dir, "state"), filepath.Join(d.dir, "root")} {
			m, err := e2e.MountsUnder(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(m) > 0 {
				t.Errorf("mounts on the host while the container runs: %v", m)
			}
		}
		if l := loopDevicesOf(t, d.dir); len(l) > 0 {
			t.Errorf("loop devices on the host while the container runs: %v", l)
		}
		out, errOut, code := d.ctr(t, "task", "exec", "--exec-id", "w", id, "sh", "-c", "echo erofs-live-mark > /erofs-live-mark && sync && cat /erofs-live-mark")
		if code != 0 || out != "erofs-live-mark\n" {
			t.Fatalf("exec write: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		if imgs := writableLayerHolding(t, filepath.Join(d.dir, "root"), "erofs-live-mark"); len(imgs) != 1 {
			t.Errorf("writable layer images holding the write: %v, want the container's one", imgs)
		}
		out, errOut, code = d.ctr(t, "task", "exec", "--exec-id", "r", id, "cat", "/erofs-live-mark")
		if code != 0 || out != "erofs-live-mark\n" {
			t.Errorf("exec read back: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})

	t.Run("read-only root stays read-only", func(t *testing.T) {
		defer d.checkClean(t)
		out, errOut, code := run(t, "--rm", "--read-only", imageName, "erofs-ro",
			"sh", "-c", "grep ' / ' /proc/mounts; touch /x")
		if code == 0 || !strings.Contains(errOut, "Read-only file system") || !regexp.MustCompile(`(?m)^overlay / overlay ro[, ]`).MatchString(out) {
			t.Errorf("got exit %d, stdout %q, stderr %q; want / a read-only overlay and the write refused", code, out, errOut)
		}
	})

	t.Run("two containers in one pod, one after the other", func(t *testing.T) {
		defer d.checkClean(t)
		const pod = "erofs-pod"
		memberAnn, stopPod := startPod(t, d, run, imageName, pod)
		defer stopPod()
		// Each member takes two ports (its layer and its writable
		// layer) beside the sandbox's two, of the 4 reserved; the second
		// reuses the ports the first one's delete freed.
		runMembers(t, run, memberAnn, imageName, overlayRW, "erofs-member1", "erofs-member2")
	})
	if l := loopDevicesOf(t, d.dir); len(l) > 0 {
		t.Errorf("loop devices left on the host: %v", l)
	}
}
