package containerd

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// blockfileSnapshotter is containerd 2.x's built-in snapshotter whose
// snapshots are ext4 image files, mounted with "loop".
const blockfileSnapshotter = "blockfile"

// rootMount matches the container's root in its /proc/mounts: a virtio-blk
// disk with ext4, read-write.
var rootMount = regexp.MustCompile(`(?m)^/dev/vd[a-z]+ / ext4 rw[, ]`)

// startBlockfileDaemon starts a containerd 2.x whose blockfile snapshotter
// copies an ext4 scratch image made here, and imports the busybox image
// into it.
func startBlockfileDaemon(t *testing.T) *daemon {
	t.Helper()
	return startBlockfileDaemonWith(t, daemonOptions{})
}

// startBlockfileDaemonWith is startBlockfileDaemon with the hull
// configuration o (whose containerd lines it sets).
func startBlockfileDaemonWith(t *testing.T, o daemonOptions) *daemon {
	t.Helper()
	o.containerd = e2e.BlockfileSnapshotter(t)
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemonWith(t, containerdPath, ctrPath, o)
	// --local: the transfer service unpacks only for the snapshotters its
	// unpack_config names (the default one).
	d.mustCtr(t, "images", "import", "--local", "--snapshotter", blockfileSnapshotter, env.image)
	return d
}

// loopDevicesOf lists the loop devices whose backing file is below dir.
func loopDevicesOf(t *testing.T, dir string) []string {
	t.Helper()
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	var devs []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, dir) {
			devs = append(devs, strings.TrimSpace(l))
		}
	}
	return devs
}

// TestBlockfileRootfs runs containers whose root comes from containerd's
// blockfile snapshotter: the image file reaches the guest as a hot-added
// virtio-blk disk and the agent mounts it as the root (no loop device or
// mount on the host).
func TestBlockfileRootfs(t *testing.T) {
	d := startBlockfileDaemon(t)
	run := func(t *testing.T, args ...string) (string, string, int) {
		t.Helper()
		return d.ctr(t, append([]string{"run", "--snapshotter", blockfileSnapshotter, "--runtime", runtimeName}, args...)...)
	}

	t.Run("root is a virtio-blk disk", func(t *testing.T) {
		defer d.checkClean(t)
		out, errOut, code := run(t, "--rm", imageName, "bf-one",
			"sh", "-c", "echo written > /new && cat /new && cat /proc/mounts")
		if code != 0 || !strings.HasPrefix(out, "written\n") || !rootMount.MatchString(out) {
			t.Fatalf("got exit %d, stdout %q, stderr %q; want the file read back and / on /dev/vdX ext4 rw", code, out, errOut)
		}
		if l := loopDevicesOf(t, d.dir); len(l) > 0 {
			t.Errorf("loop devices left on the host: %v", l)
		}
	})

	t.Run("read-only root stays read-only", func(t *testing.T) {
		defer d.checkClean(t)
		out, errOut, code := run(t, "--rm", "--read-only", imageName, "bf-ro",
			"sh", "-c", "grep ' / ' /proc/mounts; touch /x")
		if code == 0 || !strings.Contains(errOut, "Read-only file system") || !regexp.MustCompile(`(?m)^/dev/vd[a-z]+ / ext4 ro[, ]`).MatchString(out) {
			t.Errorf("got exit %d, stdout %q, stderr %q; want / on /dev/vdX ext4 ro and the write refused", code, out, errOut)
		}
	})

	t.Run("two containers in one pod, one after the other", func(t *testing.T) {
		defer d.checkClean(t)
		const pod = "bf-pod"
		memberAnn, stopPod := startPod(t, d, run, imageName, pod)
		defer stopPod()
		// Each member hot-adds a disk of its own; the second reuses the
		// port the first one's unplug freed.
		runMembers(t, run, memberAnn, imageName, rootMount, "bf-member1", "bf-member2")
		// The pod sandbox container is the agent's pause process, which
		// only holds the pod's namespaces: an exec in it is refused, and
		// the pod lives on.
		_, errOut, code := d.ctr(t, "task", "exec", "--exec-id", "e1", pod, "true")
		if code == 0 || !strings.Contains(errOut, "not implemented") {
			t.Errorf("exec in the pod sandbox: exit %d, stderr %q; want it refused as not implemented", code, errOut)
		}
		runMembers(t, run, memberAnn, imageName, rootMount, "bf-member3")
	})
	if l := loopDevicesOf(t, d.dir); len(l) > 0 {
		t.Errorf("loop devices left on the host: %v", l)
	}
}

// ctrRun is a test's `ctr run` with its snapshotter and runtime: stdout,
// stderr and exit code.
type ctrRun func(t *testing.T, args ...string) (string, string, int)

// startPod starts the pod sandbox container pod of image with run (sleeping,
// detached), as CRI does: with the CRI annotations and a network namespace
// of its own, an empty one (a pod's comes from CNI, with a path). It returns
// the annotations of the pod's members, and the pod's removal for the test
// to defer.
func startPod(t *testing.T, d *daemon, run ctrRun, image, pod string) (memberAnn []string, remove func()) {
	t.Helper()
	netns := "hull-" + filepath.Base(d.dir)
	if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	// Deleted even when a start or removal below ends the test; a second
	// delete is harmless.
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", netns).Run() })
	podAnn := []string{"--with-ns", "network:/run/netns/" + netns,
		"--annotation", "io.kubernetes.cri.container-type=sandbox", "--annotation", "io.kubernetes.cri.sandbox-id=" + pod}
	if _, errOut, code := run(t, append(append([]string{"-d"}, podAnn...), image, pod, "sleep", "600")...); code != 0 {
		t.Fatalf("starting the pod sandbox: exit %d: %s", code, errOut)
	}
	memberAnn = []string{"--annotation", "io.kubernetes.cri.container-type=container", "--annotation", "io.kubernetes.cri.sandbox-id=" + pod}
	return memberAnn, func() {
		defer func() { _ = exec.Command("ip", "netns", "delete", netns).Run() }()
		d.forget(t, pod)
	}
}

// runMembers runs each of ids in a pod (memberAnn), one after the other
// (--rm): each writes a file of its root and reads it back, and its
// /proc/mounts must match root.
func runMembers(t *testing.T, run ctrRun, memberAnn []string, image string, root *regexp.Regexp, ids ...string) {
	t.Helper()
	for i, id := range ids {
		out, errOut, code := run(t, append(append([]string{"--rm"}, memberAnn...), image, id,
			"sh", "-c", fmt.Sprintf("echo member%d > /f && cat /f && cat /proc/mounts", i+1))...)
		if code != 0 || !strings.HasPrefix(out, fmt.Sprintf("member%d\n", i+1)) || !root.MatchString(out) {
			t.Fatalf("member %s: got exit %d, stdout %q, stderr %q", id, code, out, errOut)
		}
	}
}
