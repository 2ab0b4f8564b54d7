package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/procfs"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/storage"
)

// ext4Image makes an ext4 image file of the busybox bundle's root, as
// containerd's blockfile snapshotter keeps a snapshot.
func ext4Image(t testing.TB, bundle string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "root.ext4")
	e2e.MakeExt4(t, img, "32M", filepath.Join(bundle, "rootfs"))
	return img
}

// imageFile reads a file of an ext4 image on the host without mounting it.
func imageFile(t *testing.T, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// runOnRoot runs a busybox container id in sb whose root is the mount list
// rootfs, and returns its output and exit status, or the create's error.
// The host must mount nothing of the container's (no mount under
// stateDir with id in its path).
func runOnRoot(t *testing.T, sb *sandbox.Sandbox, stateDir, id string, rootfs []storage.Mount, args ...string) (result, error) {
	t.Helper()
	ctx := withTimeout(t, 2*time.Minute)
	bundle, spec := busyboxBundle(t, args...)
	var stdout, stderr e2e.SyncBuffer
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
		ID: id, Bundle: bundle, Spec: spec, Rootfs: rootfs,
		Stdio: sandbox.IO{Stdout: &stdout, Stderr: &stderr},
	})
	if err != nil {
		return result{}, err
	}
	defer deleteContainer(t, ctr)
	ms, err := e2e.MountsUnder(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if strings.Contains(m, "/"+id+"/") {
			t.Errorf("root mounted on the host at %s", m)
		}
	}
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	st, err := ctr.Wait(ctx)
	if err != nil {
		t.Fatalf("wait %s: %v", id, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), status: st.Code}, nil
}

// startOnImage creates and starts the container id of bundle and spec in
// sb, its root the ext4 image img mounted with the options "loop" and mode
// ("ro" or "rw"); the container's output goes to the returned buffers.
func startOnImage(ctx context.Context, t *testing.T, sb *sandbox.Sandbox, id, bundle string, spec *specs.Spec, img, mode string) (ctr *sandbox.Container, stdout, stderr *e2e.SyncBuffer) {
	t.Helper()
	stdout, stderr = &e2e.SyncBuffer{}, &e2e.SyncBuffer{}
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
		ID: id, Bundle: bundle, Spec: spec,
		Rootfs: []storage.Mount{{Type: "ext4", Source: img, Options: []string{"loop", mode}}},
		Stdio:  sandbox.IO{Stdout: stdout, Stderr: stderr},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	return ctr, stdout, stderr
}

// TestBlockRootfs runs containers whose root is an ext4 image that a
// blockfile-style mount list names (type ext4, option loop): the image is
// hot-added to the VM as a virtio-blk disk and mounted by the agent; the
// host mounts nothing for it.
func TestBlockRootfs(t *testing.T) {
	c := containerConfig(t)
	c.Hypervisor.QEMU.HotplugDisks = 2
	sb := startSandbox(t, c, "blk")
	var rootRW = regexp.MustCompile(`(?m)^/dev/vd[a-z]+ / ext4 rw[, ]`)

	run := func(t *testing.T, id, img string, opts []string, args ...string) (result, error) {
		t.Helper()
		return runOnRoot(t, sb, c.Runtime.StateDir, id, []storage.Mount{{Type: "ext4", Source: img, Options: opts}}, args...)
	}

	bundle, _ := busyboxBundle(t, "true")
	t.Run("read-write root, write reaches the image", func(t *testing.T) {
		img := ext4Image(t, bundle)
		r, err := run(t, "blk-rw", img, []string{"loop", "rw"}, "sh", "-c", "echo written > /new && cat /proc/mounts")
		if err != nil {
			t.Fatal(err)
		}
		if r.status != 0 || !rootRW.MatchString(r.stdout) {
			t.Fatalf("status %d, stdout %q, stderr %q: want / on /dev/vdX ext4 rw", r.status, r.stdout, r.stderr)
		}
		if got := imageFile(t, img, "/new"); got != "written\n" {
			t.Errorf("image holds %q in /new after the container, want the guest's write", got)
		}
	})
	t.Run("read-only root stays read-only", func(t *testing.T) {
		img := ext4Image(t, bundle)
		r, err := run(t, "blk-ro", img, []string{"loop", "ro"}, "sh", "-c", "grep ' / ' /proc/mounts; echo x > /new")
		if err != nil {
			t.Fatal(err)
		}
		if r.status == 0 || !regexp.MustCompile(`(?m)^/dev/vd[a-z]+ / ext4 ro[, ]`).MatchString(r.stdout) || !strings.Contains(r.stderr, "Read-only file system") {
			t.Errorf("status %d, stdout %q, stderr %q: want / on /dev/vdX ext4 ro and the write refused", r.status, r.stdout, r.stderr)
		}
	})
	t.Run("more containers than hotplug ports, one after the other", func(t *testing.T) {
		// Each delete frees its port: more containers than the 2 ports in
		// turn all get a disk.
		for i := range 3 {
			img := ext4Image(t, bundle)
			id := "blk-seq" + string(rune('a'+i))
			r, err := run(t, id, img, []string{"loop", "rw"}, "sh", "-c", "cat /proc/mounts")
			if err != nil || r.status != 0 || !rootRW.MatchString(r.stdout) {
				t.Fatalf("%s: %v, status %d, stdout %q, stderr %q", id, err, r.status, r.stdout, r.stderr)
			}
		}
	})
	t.Run("two at once, a third finds no port", func(t *testing.T) {
		ctx := withTimeout(t, 2*time.Minute)
		var ctrs []*sandbox.Container
		defer func() {
			for _, ctr := range ctrs {
				deleteContainer(t, ctr)
			}
		}()
		for i, id := range []string{"blk-one", "blk-two", "blk-three"} {
			b, spec := busyboxBundle(t, "sleep", "600")
			ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
				ID: id, Bundle: b, Spec: spec,
				Rootfs: []storage.Mount{{Type: "ext4", Source: ext4Image(t, bundle), Options: []string{"loop", "rw"}}},
			})
			if i == 2 {
				if !errors.Is(err, errdefs.ErrResourceExhausted) {
					t.Errorf("third disk: got %v, want class %v", err, errdefs.ErrResourceExhausted)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", id, err)
			}
			ctrs = append(ctrs, ctr)
			if err := ctr.Start(ctx); err != nil {
				t.Fatalf("start %s: %v", id, err)
			}
		}
		for _, ctr := range ctrs {
			var out e2e.SyncBuffer
			proc := *defaultSpec("cat", "/proc/mounts").Process
			p, err := ctr.Exec(ctx, "e", &proc, sandbox.IO{Stdout: &out})
			if err != nil {
				t.Fatal(err)
			}
			if st, err := p.Wait(ctx); err != nil || st.Code != 0 || !rootRW.MatchString(out.String()) {
				t.Errorf("%s: exec %v, status %d, mounts %q", ctr.ID(), err, st.Code, out.String())
			}
		}
	})
	t.Run("refused mount lists leave nothing", func(t *testing.T) {
		img := ext4Image(t, bundle)
		for _, tc := range []struct {
			name  string
			typ   string
			opts  []string
			class error
		}{
			{"xfs", "xfs", []string{"loop"}, errdefs.ErrNotImplemented},
			{"erofs with dm-verity", "erofs", []string{"ro", "loop", "X-containerd.dmverity=/x.dmverity"}, errdefs.ErrNotImplemented},
		} {
			ctx := withTimeout(t, time.Minute)
			b, spec := busyboxBundle(t, "true")
			_, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
				ID: "blk-bad", Bundle: b, Spec: spec,
				Rootfs: []storage.Mount{{Type: tc.typ, Source: img, Options: tc.opts}},
			})
			if !errors.Is(err, tc.class) {
				t.Errorf("%s: got %v, want class %v", tc.name, err, tc.class)
			}
		}
	})
}

// TestBlockRootfsMicroVM: microvm cannot hot-add, so a block root is refused
// as not implemented, and the refused create leaves nothing behind.
func TestBlockRootfsMicroVM(t *testing.T) {
	c := containerConfig(t)
	c.Hypervisor.QEMU.Machine = "microvm"
	sb := startSandbox(t, c, "blk-micro")
	bundle, spec := busyboxBundle(t, "true")
	_, err := sb.CreateContainer(withTimeout(t, time.Minute), sandbox.ContainerConfig{
		ID: "blk", Bundle: bundle, Spec: spec,
		Rootfs: []storage.Mount{{Type: "ext4", Source: ext4Image(t, bundle), Options: []string{"loop", "rw"}}},
	})
	if !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("got %v, want class %v", err, errdefs.ErrNotImplemented)
	}
	// The sandbox still takes a shared root.
	if r := runContainer(t, sb, "shared", bundle, spec); r.status != 0 {
		t.Errorf("shared root after the refusal: status %d, stderr %q", r.status, r.stderr)
	}
}

// TestBlockRootfsReadOnlyDisk: a read-only root is read-only below the
// guest's mount too, not only by the "ro" mount option the agent applies.
// A container with a guest root's privileges finds its root disk, makes a
// node for it, clears the guest kernel's read-only flag (BLKROSET) and
// writes a block over it: the guest sees a read-only disk (the host
// plugged it so), the write fails, and the host's image file keeps its
// bytes.
func TestBlockRootfsReadOnlyDisk(t *testing.T) {
	c := containerConfig(t)
	c.Hypervisor.QEMU.HotplugDisks = 1
	sb := startSandbox(t, c, "blk-rodisk")
	bundle, spec := busyboxBundle(t, "sh", "-c", strings.Join([]string{
		`dev=$(awk '$2=="/"{print $1}' /proc/mounts); dev=${dev#/dev/}`,
		`echo "disk=$dev ro=$(cat /sys/block/$dev/ro)"`,
		`mknod /dev/rootdisk b $(cut -d: -f1 /sys/block/$dev/dev) $(cut -d: -f2 /sys/block/$dev/dev)`,
		`blockdev --setrw /dev/rootdisk`,
		`dd if=/dev/urandom of=/dev/rootdisk bs=4096 seek=100 count=1 conv=notrunc,fsync 2>&1`,
		`echo "dd=$?"`,
	}, "; "))
	caps := []string{"CAP_SYS_ADMIN", "CAP_MKNOD"}
	pc := spec.Process.Capabilities
	pc.Bounding = append(pc.Bounding, caps...)
	pc.Effective = append(pc.Effective, caps...)
	pc.Permitted = append(pc.Permitted, caps...)
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{}
	}
	spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Access: "rwm"})
	img := ext4Image(t, bundle)
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	ctx := withTimeout(t, 2*time.Minute)
	ctr, stdout, stderr := startOnImage(ctx, t, sb, "blk-rodisk", bundle, spec, img, "ro")
	st, werr := ctr.Wait(ctx)
	t.Logf("writer: status %d (%v), stdout %q, stderr %q", st.Code, werr, stdout.String(), stderr.String())
	if werr == nil {
		deleteContainer(t, ctr)
	}
	after, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("the guest's write to its read-only root disk changed the image file on the host")
	}
	if !strings.Contains(stdout.String(), " ro=1") {
		t.Errorf("the guest sees a writable root disk: stdout %q", stdout.String())
	}
	if strings.Contains(stdout.String(), "dd=0") {
		t.Errorf("the guest's write to its read-only root disk succeeded: stdout %q", stdout.String())
	}
}

// TestBlockRootfsKeptDisk: a guest that refuses to give back a container's
// root disks (its privileged workload masks the ACPI event through which
// q35's PCI hotplug asks the guest to eject a device), four of them: an
// erofs root of three layers and a writable one. The container's delete
// still completes, its unplug within one unplug bound (10 s) for all the
// disks, not one per disk (timed apart from the agent's work, which TCG
// under load makes slow); QEMU keeps the images open until
// the VM stops, and then no process holds them and nothing is left.
func TestBlockRootfsKeptDisk(t *testing.T) {
	const (
		disks = 4
		// unplugBound is the QEMU driver's wait for the guest to
		// release a device.
		unplugBound = 10 * time.Second
	)
	c := containerConfig(t)
	c.Hypervisor.QEMU.HotplugDisks = disks
	sb := startSandbox(t, c, "blk-kept")
	bundle, spec := busyboxBundle(t, "sh", "-c",
		"echo mask > /sys/firmware/acpi/interrupts/gpe01 && echo gpe01: $(cat /sys/firmware/acpi/interrupts/gpe01)")
	// A writable sysfs with its firmware directory visible.
	for i, m := range spec.Mounts {
		if m.Destination == "/sys" {
			spec.Mounts[i].Options = slices.DeleteFunc(slices.Clone(m.Options), func(o string) bool { return o == "ro" })
		}
	}
	spec.Linux.MaskedPaths = slices.DeleteFunc(spec.Linux.MaskedPaths, func(p string) bool { return strings.HasPrefix(p, "/sys") })
	spec.Linux.ReadonlyPaths = slices.DeleteFunc(spec.Linux.ReadonlyPaths, func(p string) bool { return strings.HasPrefix(p, "/sys") })
	pc := spec.Process.Capabilities
	pc.Bounding = append(pc.Bounding, "CAP_SYS_ADMIN")
	pc.Effective = append(pc.Effective, "CAP_SYS_ADMIN")
	pc.Permitted = append(pc.Permitted, "CAP_SYS_ADMIN")
	// Three layers (busybox at the bottom, two small ones above) and the
	// writable layer: four disks.
	layers := []string{}
	for i := range 2 {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "layer"+strconv.Itoa(i)), []byte("layer\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		layers = append(layers, erofsImage(t, dir))
	}
	layers = append(layers, erofsImage(t, filepath.Join(bundle, "rootfs")))
	rw := emptyExt4(t)
	imgs := append([]string{rw}, layers...)

	ctx := withTimeout(t, 3*time.Minute)
	var stdout, stderr e2e.SyncBuffer
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
		ID: "blk-kept", Bundle: bundle, Spec: spec,
		Rootfs: erofsMounts(rw, layers...),
		Stdio:  sandbox.IO{Stdout: &stdout, Stderr: &stderr},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	st, err := ctr.Wait(ctx)
	if err != nil || st.Code != 0 || !strings.Contains(stdout.String(), "gpe01:") || !strings.Contains(stdout.String(), "masked") {
		t.Fatalf("the workload did not mask the hotplug event: %v, status %d, stdout %q, stderr %q", err, st.Code, stdout.String(), stderr.String())
	}
	vmm := sb.HostProcesses()["vmm"].PID
	for _, img := range imgs {
		if !heldBy(t, img, vmm) {
			t.Fatalf("qemu (pid %d) does not hold %s while the container runs", vmm, img)
		}
	}

	// The unplug's share of the delete, apart from the agent's (slow
	// under TCG with load): from the sandbox's start of the disks'
	// removal to the driver's last word on a kept disk.
	rec := &unplugTimes{}
	logger := logrus.New()
	logger.SetLevel(logrus.DebugLevel)
	logger.SetOutput(io.Discard)
	logger.AddHook(rec)
	start := time.Now()
	if err := ctr.Delete(log.WithLogger(ctx, logrus.NewEntry(logger)), true); err != nil {
		t.Fatalf("delete: %v", err)
	}
	took := time.Since(start)
	unplug, kept := rec.span()
	t.Logf("delete of a container whose %d disks the guest keeps took %s, its unplug %s", disks, took.Round(time.Millisecond), unplug.Round(time.Millisecond))
	if kept != disks {
		t.Fatalf("the driver reported %d disks kept, want %d", kept, disks)
	}
	// Waiting for each disk in turn takes at least the bound per disk;
	// one wait for all takes it once, and QMP's few commands.
	if unplug >= 2*unplugBound {
		t.Errorf("the unplug took %s: the unplug bound (%s) more than once, not once for all", unplug, unplugBound)
	}
	for _, img := range imgs {
		if !heldBy(t, img, vmm) {
			t.Fatalf("qemu let %s go: the guest did not keep the disks (the test's guest-side hook did not take)", img)
		}
	}
	// Their ports stay taken while QEMU has the devices.
	b2, spec2 := busyboxBundle(t, "true")
	if _, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
		ID: "blk-next", Bundle: b2, Spec: spec2,
		Rootfs: []storage.Mount{{Type: "ext4", Source: ext4Image(t, b2), Options: []string{"loop", "rw"}}},
	}); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("a disk into the kept ones' ports: got %v, want class %v", err, errdefs.ErrResourceExhausted)
	}

	if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, img := range imgs {
		if o := openers(t, img); len(o) > 0 {
			t.Errorf("%s is still open after the vm stopped: %v", img, o)
		}
	}
}

// openers lists the processes with a descriptor open on path, as "pid/fd".
func openers(t *testing.T, path string) []string {
	t.Helper()
	o, err := procfs.Openers(path)
	if err != nil {
		t.Fatal(err)
	}
	found := make([]string, 0, len(o))
	for _, d := range o {
		found = append(found, d.String())
	}
	return found
}

// heldBy tells whether process pid has path open.
func heldBy(t *testing.T, path string, pid int) bool {
	t.Helper()
	for _, o := range openers(t, path) {
		if filepath.Dir(o) == strconv.Itoa(pid) {
			return true
		}
	}
	return false
}

// TestBlockRootfsWriteSurvivesStop: a container still running when its
// sandbox stops has written to its block root. The stop ends the VM
// without the guest's power-off once the guest destroyed its sandbox, so
// that destroy must have written the guest's cached data back to the disk:
// the image holds the write after the stop.
func TestBlockRootfsWriteSurvivesStop(t *testing.T) {
	c := containerConfig(t)
	c.Hypervisor.QEMU.HotplugDisks = 1
	sb := startSandbox(t, c, "blk-stop")
	bundle, spec := busyboxBundle(t, "sh", "-c", "echo written > /new && echo ready && exec sleep 600")
	img := ext4Image(t, bundle)
	ctx := withTimeout(t, 3*time.Minute)
	_, stdout, stderr := startOnImage(ctx, t, sb, "blk-stop", bundle, spec, img, "rw")
	for !strings.Contains(stdout.String(), "ready") {
		if ctx.Err() != nil {
			t.Fatalf("the container did not write: stdout %q, stderr %q", stdout.String(), stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// No delete: the stop finds the container running.
	if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if got := imageFile(t, img, "/new"); got != "written\n" {
		t.Errorf("image holds %q in /new after the stop, want the container's write", got)
	}
}

// unplugTimes is a log hook that times a container's disk removal: from
// the sandbox's "unplugging rootfs disks" to the driver's last report of
// a disk the guest keeps.
type unplugTimes struct {
	mu          sync.Mutex
	first, last time.Time
	kept        int
}

func (*unplugTimes) Levels() []logrus.Level { return logrus.AllLevels }

func (u *unplugTimes) Fire(e *logrus.Entry) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case e.Message == "unplugging rootfs disks":
		u.first = e.Time
	case strings.HasPrefix(e.Message, "the guest keeps the disk"):
		u.last = e.Time
		u.kept++
	}
	return nil
}

// span is the time from the removal's start to its last kept disk, and
// how many disks were kept.
func (u *unplugTimes) span() (time.Duration, int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.first.IsZero() || u.last.IsZero() {
		return 0, u.kept
	}
	return u.last.Sub(u.first), u.kept
}
