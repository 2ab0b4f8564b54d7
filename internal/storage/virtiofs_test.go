package storage

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/modlist"
	"github.com/hull-runtime/hull/internal/procfs"
	"github.com/hull-runtime/hull/internal/virtiofs"
)

// requireVirtiofsd stops the test when virtiofsd or root is missing.
func requireVirtiofsd(t *testing.T) {
	t.Helper()
	requireRoot(t)
	for _, b := range append(append([]string(nil), virtiofs.Binaries...), "") {
		if b == "" {
			if _, err := exec.LookPath("virtiofsd"); err == nil {
				return
			}
			break
		}
		if _, err := os.Stat(b); err == nil {
			return
		}
	}
	needed(t, "test needs virtiofsd (apt-get install qemu-system-common)")
}

// startDaemon runs virtiofsd on s and stops it, checking it and its
// sandbox child are gone, when the test ends.
func startDaemon(t *testing.T, s *Shared, sock string) *virtiofs.Daemon {
	t.Helper()
	d, err := virtiofs.Start(context.Background(), virtiofs.Config{SocketPath: sock, SharedDir: s.Dir()})
	if err != nil {
		t.Fatal(err)
	}
	pid := d.PID()
	t.Cleanup(func() {
		kids := children(pid)
		if err := d.Stop(context.Background()); err != nil {
			t.Errorf("stopping virtiofsd: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for _, p := range append(kids, pid) {
			for alive(p) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if alive(p) {
				t.Errorf("virtiofsd process %d still running; killing it", p)
				if pr, err := os.FindProcess(p); err == nil {
					_ = pr.Kill()
				}
			}
		}
	})
	return d
}

// children lists the child processes of pid.
func children(pid int) []int {
	var kids []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				kids = append(kids, n)
			}
		}
	}
	return kids
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f, err := procfs.StatFields(b)
	return err != nil || f[0] != "Z"
}

// TestPropagationToVirtiofsd checks without a VM that a container added
// after virtiofsd built its sandbox is visible inside it. A bare unix
// connection stands in for QEMU: virtiofsd sets up its namespaces as soon
// as its one front end connects, and its sandbox child's root is then the
// shared directory.
func TestPropagationToVirtiofsd(t *testing.T) {
	requireVirtiofsd(t)
	for _, api := range []string{"new", "old"} {
		t.Run(api+" mount api", func(t *testing.T) {
			if api == "old" {
				oldMountAPI.Store(true)
				defer oldMountAPI.Store(false)
			}
			testPropagation(t)
		})
	}
}

func testPropagation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.mountSub(t)
	s := newShared(t, f.state)
	d := startDaemon(t, s, filepath.Join(f.dir, "vfs.sock"))
	conn, err := net.Dial("unix", d.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	var child int
	for deadline := time.Now().Add(5 * time.Second); child == 0 && time.Now().Before(deadline); {
		if kids := children(d.PID()); len(kids) > 0 {
			child = kids[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatalf("virtiofsd made no sandbox child: %s", d.Output())
	}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", child))
	if self == theirs {
		t.Fatalf("virtiofsd child %d shares our mount namespace", child)
	}
	if _, err := s.AddContainer(ctx, Container{ID: "c1", Spec: f.spec(), Bundle: f.bundle}); err != nil {
		t.Fatal(err)
	}
	root := fmt.Sprintf("/proc/%d/root", child)
	if got := readFile(t, filepath.Join(root, "c1/rootfs/etc/hello")); got != "from the image\n" {
		t.Errorf("rootfs in virtiofsd's namespace: %q", got)
	}
	if got := readFile(t, filepath.Join(root, "c1/volumes/2-ro/sub/c")); got != "submount\n" {
		t.Errorf("submount in virtiofsd's namespace: %q", got)
	}
	if err := os.WriteFile(filepath.Join(root, "c1/volumes/2-ro/b"), nil, 0o644); !isEROFS(err) {
		t.Errorf("ro volume writable in virtiofsd's namespace: %v", err)
	}
	if err := s.RemoveContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "c1/rootfs/etc/hello")); err == nil {
		t.Error("rootfs still visible to virtiofsd after RemoveContainer")
	}
}

// requireVM returns a prepared kernel, or stops the test when QEMU, the
// kernel package, go or virtiofsd is missing.
func requireVM(t *testing.T) *guestimage.Kernel {
	t.Helper()
	requireVirtiofsd(t)
	var missing []string
	for _, b := range []string{qemu.DefaultBinary, "go"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b+" in PATH")
		}
	}
	debs, _ := filepath.Glob(filepath.Join(guestimage.DefaultCacheDir, "debs", "linux-image-*.deb"))
	if len(debs) == 0 {
		missing = append(missing, "a kernel package in "+filepath.Join(guestimage.DefaultCacheDir, "debs")+" (hull image build fills it)")
	}
	if len(missing) > 0 {
		needed(t, "real-VM test needs "+strings.Join(missing, ", "))
	}
	sort.Strings(debs)
	k, err := guestimage.PrepareKernel(context.Background(), guestimage.Options{KernelDeb: debs[len(debs)-1]})
	if err != nil {
		t.Fatalf("preparing the kernel: %v", err)
	}
	return k
}

// buildInitrd builds testdata/guestinit statically and packs it with the
// virtio-fs modules.
func buildInitrd(t *testing.T, k *guestimage.Kernel) string {
	t.Helper()
	dir := t.TempDir()
	init := filepath.Join(dir, "init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", init, "./testdata/guestinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building guestinit: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "initrd")
	out, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guestimage.WriteInitrd(context.Background(), out, guestimage.InitrdSpec{
		Init: init, Kernel: k, Features: []string{modlist.FeatureBusPCI, modlist.FeatureVirtioFS},
	}); err != nil {
		_ = out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return initrd
}

const testCgroupParent = "hull-storage-test"

// TestGuestSeesContainer boots a VM whose init mounts the share, then adds
// a container, and checks on the console what the guest saw: the rootfs,
// a file bind, a read-only volume it cannot write, a read-write volume
// whose write reaches the host, and a tree it cannot change.
func TestGuestSeesContainer(t *testing.T) {
	k := requireVM(t)
	initrd := buildInitrd(t, k)
	ctx := context.Background()
	f := newFixture(t)
	f.mountSub(t)
	s := newShared(t, f.state)
	d := startDaemon(t, s, filepath.Join(f.dir, "vfs.sock"))

	vmDir := t.TempDir()
	id := fmt.Sprintf("hull-storage-test-%d", time.Now().UnixNano()%100000)
	vm, err := qemu.New(hypervisor.Config{
		ID: id, StateDir: vmDir, Kernel: k.BzImage(), Initrd: initrd,
		VCPUs: 1, MemoryMiB: 256, SharedMemory: true,
		Agent:       hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial},
		Filesystems: []hypervisor.FilesystemDevice{{Tag: FSTag, SocketPath: d.SocketPath()}},
	}, qemu.Options{Accel: qemu.AccelTCG, CgroupParent: testCgroupParent})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := vm.Stop(sctx); err != nil {
			t.Errorf("stopping the vm: %v", err)
		}
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", testCgroupParent))
		for _, d := range append(dirs, filepath.Join("/sys/fs/cgroup", testCgroupParent)) {
			_ = os.Remove(d)
		}
	})

	console := func() string { return strings.Join(vm.ConsoleTail(300), "\n") }
	wait := func(want string, limit time.Duration) {
		t.Helper()
		for start := time.Now(); time.Since(start) < limit; time.Sleep(50 * time.Millisecond) {
			c := console()
			if strings.Contains(c, want) {
				return
			}
			if strings.Contains(c, "GUEST: FAIL") {
				t.Fatalf("guest failed:\n%s\nvirtiofsd:\n%s", c, d.Output())
			}
			select {
			case <-vm.Done():
				t.Fatalf("vm exited before %q:\n%s\nvirtiofsd:\n%s", want, c, d.Output())
			default:
			}
		}
		t.Fatalf("no %q on the console within %s:\n%s\nvirtiofsd:\n%s", want, limit, console(), d.Output())
	}
	wait("GUEST: MOUNTED", 120*time.Second)
	if len(children(d.PID())) == 0 {
		t.Error("virtiofsd has no sandbox child: is it in its own namespace?")
	}
	if _, err := s.AddContainer(ctx, Container{ID: "c1", Spec: f.spec(), Bundle: f.bundle}); err != nil {
		t.Fatal(err)
	}
	wait("GUEST: DONE", 120*time.Second)
	c := console()
	t.Logf("guest said:\n%s", grep(c, "GUEST:"))
	for _, want := range []string{
		`GUEST: rootfs="from the image"`,
		`GUEST: filebind="127.0.0.1 localhost"`,
		`GUEST: rovolume="ro volume"`,
		`GUEST: submount="submount"`,
		"GUEST: rowrite read-only file system",
		"GUEST: rofilewrite read-only file system",
		"GUEST: rosubwrite read-only file system",
		"GUEST: rwwrite ok",
		"GUEST: rootfswrite ok",
		"GUEST: topmkdir read-only file system",
		"GUEST: dirmkdir read-only file system",
	} {
		if !strings.Contains(c, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if got := readFile(t, filepath.Join(f.rw, "from-guest")); got != "hello host\n" {
		t.Errorf("guest write on the host: %q", got)
	}
	if got := readFile(t, filepath.Join(f.ro, "b")); got != "ro volume\n" {
		t.Errorf("ro source changed: %q", got)
	}
	// The guest powers off; virtiofsd exits when QEMU disconnects.
	select {
	case <-vm.Done():
	case <-time.After(30 * time.Second):
		t.Error("vm did not power off")
	}
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Error("virtiofsd did not exit after its vm")
	}
	if err := s.RemoveContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}
