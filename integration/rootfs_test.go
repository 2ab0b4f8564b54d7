package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// RootfsAssetsEnv names the directory of the hull kernel's guest image with
// a read-only erofs root image (`make image-rootfs`: _output/assets-rootfs).
const RootfsAssetsEnv = "HULL_TEST_ASSETS_ROOTFS"

// rootfsAssets returns the rootfs image directory and its manifest, or
// fails: the tests that need it do not skip.
func rootfsAssets(t testing.TB) (string, *guestimage.Manifest) {
	t.Helper()
	dir := os.Getenv(RootfsAssetsEnv)
	if dir == "" {
		t.Fatalf("%s is not set: it names the guest image with an erofs root image; run `make integration` (or `make image-rootfs` and set it to _output/assets-rootfs)", RootfsAssetsEnv)
	}
	m, err := guestimage.ReadManifest(dir)
	if err != nil {
		t.Fatalf("%s: %v (run `make image-rootfs`)", RootfsAssetsEnv, err)
	}
	if err := m.Verify(dir); err != nil {
		t.Fatalf("%s: %v", RootfsAssetsEnv, err)
	}
	if m.Rootfs == nil || m.ImageKind() != guestimage.KindRootfs || m.Initrd == nil {
		t.Fatalf("%s=%s is not a rootfs image with its initrd: kind %q, rootfs %+v", RootfsAssetsEnv, dir, m.ImageKind(), m.Rootfs)
	}
	return dir, m
}

// rootfsConfig is containerConfig booting the image of kind (initrd or
// rootfs) from the rootfs image directory.
func rootfsConfig(t *testing.T, kind string) (*config.Config, *guestimage.Manifest) {
	t.Helper()
	dir, m := rootfsAssets(t)
	c := containerConfig(t)
	c.Image.AssetsDir = dir
	c.Image.Kind = kind
	return c, m
}

// rootMountPattern matches the guest's root in /proc/mounts: erofs,
// read-only, mounted with DAX.
var rootMountPattern = regexp.MustCompile(`(?m)^\S+ / erofs ro\S*\bdax(=always)?\b`)

// TestRootfsImage boots the agent from the erofs root image through
// virtio-pmem, runs a busybox container in it, and checks from inside the
// guest that the root is erofs mounted read-only with DAX and that /etc is
// writable with the image's files, and from the host that QEMU maps the
// image read-only and private, and that the guest's pages of it are the
// file's (page cache) pages, not anonymous copies.
func TestRootfsImage(t *testing.T) {
	c, m := rootfsConfig(t, guestimage.KindRootfs)
	sb := startSandbox(t, c, "rootfs")

	d := guestDetails(t, sb)
	if d.GetKernelRelease() != m.Kernel.Release {
		t.Errorf("guest kernel %q, want %q", d.GetKernelRelease(), m.Kernel.Release)
	}
	if got, want := slices.Sorted(slices.Values(d.GetFeatures())), slices.Sorted(slices.Values(m.Builtin)); len(want) == 0 || !slices.Equal(got, want) {
		t.Errorf("guest features %q, want the built-in %q (the module list in the image's /etc)", got, want)
	}
	if len(d.GetWarnings()) > 0 {
		t.Errorf("guest warnings: %v", d.GetWarnings())
	}

	// A pod sandbox container first: its waiting stage, hull-pause, runs
	// from the image's root.
	pbundle, pspec := busyboxBundle(t, "/pause")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pause, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "pause", Bundle: pbundle, Spec: pspec, PodSandbox: true})
	if err != nil {
		t.Fatalf("creating a pod sandbox container: %v", err)
	}
	t.Cleanup(func() { _ = pause.Delete(context.Background(), true) })
	if err := pause.Start(ctx); err != nil {
		t.Fatalf("starting the pod sandbox container: %v", err)
	}

	// The container shares the guest's PID namespace, so its /proc/1 is
	// the agent: /proc/1/mounts is the guest's mount table. It is read
	// through every thread of the agent: a thread that has a root of its
	// own for a moment (setting up a container) shows only what lies
	// under that root. It also finds the pod sandbox's process.
	bundle, spec := busyboxBundle(t, "sh", "-c", strings.Join([]string{
		"cat /proc/1/task/*/mounts | sort -u",
		"for p in /proc/[0-9]*; do [ \"$(cat $p/comm)\" = pause ] && echo \"pause process: $(tr '\\0' ' ' < $p/cmdline)\"; done; true",
		"echo container-writes > /written && cat /written",
	}, " && "))
	spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
	r := runContainer(t, sb, "mounts", bundle, spec)
	if r.status != 0 {
		t.Fatalf("container: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if !rootMountPattern.MatchString(r.stdout) {
		t.Errorf("the guest's root is not erofs mounted ro with dax:\n%s", r.stdout)
	}
	for _, dir := range []string{"/etc", "/var", "/run", "/tmp"} {
		if !regexp.MustCompile(`(?m)^\S+ ` + regexp.QuoteMeta(dir) + ` tmpfs rw`).MatchString(r.stdout) {
			t.Errorf("no writable tmpfs on %s in the guest:\n%s", dir, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "container-writes") {
		t.Errorf("the container could not write its own root: %q", r.stdout)
	}
	if !strings.Contains(r.stdout, "pause process: /pause \n") {
		t.Errorf("no pod sandbox process running /pause (hull-pause) in the guest:\n%s", r.stdout)
	}

	// Host side: QEMU's mapping of the image.
	pid := sb.VM().Describe().PID
	image := m.RootfsPath(c.Image.AssetsDir)
	mp, err := smapsOf(pid, image)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU's mapping of %s: %s, Rss %d KiB, Anonymous %d KiB, Pss %d KiB", image, mp.perms, mp.rssKiB, mp.anonKiB, mp.pssKiB)
	if mp.perms != "r--p" {
		t.Errorf("QEMU maps the image %s, want r--p (read-only, private)", mp.perms)
	}
	if mp.rssKiB == 0 {
		t.Error("none of the image's pages are resident: the guest did not run from it")
	}
	if mp.anonKiB != 0 {
		t.Errorf("%d KiB of the image's mapping are anonymous copies, want 0 (all file pages)", mp.anonKiB)
	}
	// The agent binary alone is most of the image, and the guest runs it
	// in place: a good part of it must be resident.
	if mp.rssKiB < 1024 {
		t.Errorf("only %d KiB of the image resident; the agent runs from it", mp.rssKiB)
	}
}

// TestRootfsImageBootsInitrd: image.kind = "initrd" boots the initrd the
// same image directory carries; its root is the initramfs, not erofs.
func TestRootfsImageBootsInitrd(t *testing.T) {
	c, m := rootfsConfig(t, guestimage.KindInitrd)
	sb := startSandbox(t, c, "rootfs-initrd")
	bundle, spec := busyboxBundle(t, "sh", "-c", "cat /proc/1/task/*/mounts | sort -u")
	spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
	r := runContainer(t, sb, "mounts", bundle, spec)
	if r.status != 0 {
		t.Fatalf("container: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if rootMountPattern.MatchString(r.stdout) || strings.Contains(r.stdout, " erofs ") {
		t.Errorf("an initrd boot has an erofs root:\n%s", r.stdout)
	}
	if _, err := smapsOf(sb.VM().Describe().PID, m.RootfsPath(c.Image.AssetsDir)); err == nil {
		t.Error("QEMU maps the root image in an initrd boot")
	}
}

// mapping is one /proc/PID/smaps entry's figures.
type mapping struct {
	perms                   string
	rssKiB, pssKiB, anonKiB uint64
}

// smapsOf sums the /proc/PID/smaps entries whose path starts with path.
func smapsOf(pid int, path string) (mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return mapping{}, err
	}
	defer func() { _ = f.Close() }()
	var m mapping
	found, in := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 {
			// A mapping header: range perms offset dev inode [path].
			in = len(fields) >= 6 && strings.HasPrefix(fields[5], path)
			if in {
				found = true
				m.perms = fields[1]
			}
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		n, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "Rss:":
			m.rssKiB += n
		case "Pss:":
			m.pssKiB += n
		case "Anonymous:":
			m.anonKiB += n
		}
	}
	if err := sc.Err(); err != nil {
		return mapping{}, err
	}
	if !found {
		return mapping{}, fmt.Errorf("process %d maps no %s", pid, path)
	}
	return m, nil
}

// TestRootfsImageHotplug: the root image shares the device memory range
// with hot-added DIMMs; vCPU and memory hotplug still reach the whole
// headroom.
func TestRootfsImageHotplug(t *testing.T) {
	c, _ := rootfsConfig(t, guestimage.KindRootfs)
	testHotplugQ35(t, c)
}

// TestRootfsImageGuestCannotWrite: a container given the guest's
// /dev/pmem0 writes zeros over a block of the root image (through the
// guest's page cache, synced to the device); the host's image file stays as
// the manifest describes it (QEMU maps it read-only and private), and the
// guest reading the block back from the device (O_DIRECT) gets the image's
// bytes: QEMU discarded the write, as to a ROM.
func TestRootfsImageGuestCannotWrite(t *testing.T) {
	c, m := rootfsConfig(t, guestimage.KindRootfs)
	sb := startSandbox(t, c, "rootfs-write")
	major, minor := int64(259), int64(0)
	bundle, spec := busyboxBundle(t, "sh", "-c", strings.Join([]string{
		"before=$(dd if=/dev/pmem0 bs=4096 skip=100 count=1 2>/dev/null | md5sum)",
		"dd if=/dev/zero of=/dev/pmem0 bs=4096 seek=100 count=1 conv=notrunc,fsync 2>&1",
		"after=$(dd if=/dev/pmem0 bs=4096 skip=100 count=1 iflag=direct 2>/dev/null | md5sum)",
		"zero=$(dd if=/dev/zero bs=4096 count=1 2>/dev/null | md5sum)",
		`echo "before=$before after=$after zero=$zero"`,
	}, "; "))
	spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{Path: "/dev/pmem0", Type: "b", Major: major, Minor: minor})
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{}
	}
	spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "rwm"})
	ctx := withTimeout(t, 2*time.Minute)
	var stdout, stderr e2e.SyncBuffer
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "writer", Bundle: bundle, Spec: spec, Stdio: sandbox.IO{Stdout: &stdout, Stderr: &stderr}})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	// The write may end the VM (QEMU refusing it) instead of being
	// discarded: either way the file must be unchanged.
	st, werr := ctr.Wait(ctx)
	t.Logf("writer: status %d (%v), stdout %q, stderr %q", st.Code, werr, stdout.String(), stderr.String())
	if werr == nil {
		deleteContainer(t, ctr)
	}
	if err := m.Verify(c.Image.AssetsDir); err != nil {
		t.Fatalf("the image file changed under a guest's write: %v", err)
	}
	if werr == nil {
		out := stdout.String()
		var before, after, zero string
		for _, f := range strings.Fields(out) {
			if k, v, ok := strings.Cut(f, "="); ok {
				switch k {
				case "before":
					before = v
				case "after":
					after = v
				case "zero":
					zero = v
				}
			}
		}
		if before == "" || after == "" || after == zero || after != before {
			t.Errorf("the guest reads back %q after writing zeros over %q (zeros: %q): its write went through", after, before, zero)
		}
	}
}
