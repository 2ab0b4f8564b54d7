package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// templateVM is one VM of the template tests with its agent client.
type templateVM struct {
	vm     *qemu.VM
	client *agentclient.Client
	dir    string
}

// startTemplateVM starts a VM of config c on the hull kernel with template
// t, and dials its agent (bootAgentVM). The returned stop ends both and
// removes the state directory; it is also a test cleanup.
func startTemplateVM(t testing.TB, c *config.Config, id string, tpl *hypervisor.Template) (*templateVM, func()) {
	t.Helper()
	vm, client, stop := bootAgentVM(withTimeout(t, 3*time.Minute), t, c, id, func(hc *hypervisor.Config) { hc.Template = tpl }, nil)
	return &templateVM{vm: vm, client: client, dir: filepath.Join(c.Runtime.StateDir, id)}, stop
}

// makeTemplate boots a template VM in a new template directory, checks
// that its agent answers, closes the connection and saves it.
func makeTemplate(t testing.TB, c *config.Config) string {
	t.Helper()
	tdir := filepath.Join(c.Runtime.StateDir, "template")
	if err := os.Mkdir(tdir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tdir) })
	tv, _ := startTemplateVM(t, c, "tpl", &hypervisor.Template{Dir: tdir})
	ctx := withTimeout(t, 2*time.Minute)
	if _, err := tv.client.System().Health(ctx, &agent.HealthRequest{}); err != nil {
		t.Fatalf("template agent health: %v", err)
	}
	if err := tv.client.Close(); err != nil {
		t.Fatal(err)
	}
	tv.client = nil
	if err := tv.vm.Snapshot(ctx); err != nil {
		t.Fatalf("saving the template: %v\n%s", err, strings.Join(tv.vm.ConsoleTail(20), "\n"))
	}
	select {
	case <-tv.vm.Done():
	default:
		t.Error("the template VM still runs after Snapshot")
	}
	for _, name := range []string{"memory", "state"} {
		st, err := os.Stat(filepath.Join(tdir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("template %s has mode %v, want 0600", name, st.Mode().Perm())
		}
	}
	return tdir
}

// TestTemplate saves a VM booted on the hull kernel as a template, then
// restores two clones from it in each memory mode: each clone's agent
// answers on a new host connection, its guest kernel reports the same
// boot as the template's (the state was restored, not booted), and a
// guest write to RAM never reaches the template's memory file.
func TestTemplate(t *testing.T) {
	c := testConfig(t)
	c.Image.AssetsDir, _ = hullKernelAssets(t)
	// Shared clones refuse free page reporting (it would punch holes in
	// the template file), so the template is made without it.
	c.Hypervisor.FreePageReporting = false
	tdir := makeTemplate(t, c)
	before, err := os.ReadFile(filepath.Join(tdir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	memSum := fileDigest(t, filepath.Join(tdir, "memory"))

	for _, mode := range []hypervisor.TemplateMemory{hypervisor.TemplateMemoryPrivate, hypervisor.TemplateMemoryShared} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := withTimeout(t, 3*time.Minute)
			var starts []time.Duration
			for i := range 2 {
				id := "clone-" + string(mode) + string(rune('a'+i))
				tv, stop := startTemplateVM(t, c, id, &hypervisor.Template{Dir: tdir, Restore: true, Memory: mode})
				d, err := tv.client.System().GuestDetails(ctx, &agent.GuestDetailsRequest{})
				if err != nil {
					t.Fatalf("%s: guest details: %v", id, err)
				}
				// The agent began to serve before the save: a restored
				// guest did not boot again.
				starts = append(starts, d.GetBootToServe().AsDuration())
				if !strings.HasSuffix(d.GetKernelRelease(), "-hull") {
					t.Errorf("%s: kernel %q", id, d.GetKernelRelease())
				}
				// Guest memory use after the restore writes to the clone's
				// RAM; the template file must not change.
				if _, err := tv.client.System().GuestMetrics(ctx, &agent.GuestMetricsRequest{}); err != nil {
					t.Fatalf("%s: guest metrics: %v", id, err)
				}
				if mode == hypervisor.TemplateMemoryPrivate {
					// The private copy is a memfd that QEMU maps shared
					// and holds the guest's data; no file of the state
					// directory (on whatever file system) holds guest RAM.
					m, err := smapsOf(tv.vm.Describe().PID, "/memfd:hull-ram")
					switch {
					case err != nil:
						t.Errorf("%s: no private memory copy: %v", id, err)
					case m.perms != "rw-s" || m.rssKiB == 0:
						t.Errorf("%s: the memory copy is mapped %s with %d KiB resident, want rw-s with the guest's data", id, m.perms, m.rssKiB)
					}
					if _, err := os.Stat(filepath.Join(tv.dir, "memory")); err == nil {
						t.Errorf("%s: a memory file in the state directory", id)
					}
				}
				stop()
			}
			if starts[0] != starts[1] {
				t.Errorf("clones report different boot-to-serve times %v and %v: they booted instead of restoring", starts[0], starts[1])
			}
			if got := fileDigest(t, filepath.Join(tdir, "memory")); got != memSum {
				t.Error("the template memory file changed while clones ran")
			}
		})
	}
	t.Run("corrupt state", func(t *testing.T) {
		// A template whose state QEMU cannot load: the start fails with
		// QEMU's reason and leaves no QEMU, no memory copy and no socket.
		bad := filepath.Join(c.Runtime.StateDir, "bad-template")
		if err := os.Mkdir(bad, 0o700); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = os.RemoveAll(bad) }()
		if err := os.Link(filepath.Join(tdir, "memory"), filepath.Join(bad, "memory")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bad, "state"), []byte("not a migration stream"), 0o600); err != nil {
			t.Fatal(err)
		}
		kernel, initrd, err := launch.Assets(c, false)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(c.Runtime.StateDir, "badclone")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = os.RemoveAll(dir) }()
		ep := hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName}
		vm, err := qemu.New(hypervisor.Config{
			ID: "badclone", StateDir: dir, Kernel: kernel, Initrd: initrd,
			KernelParams: append(agentclient.KernelParams(ep, "info"), c.Hypervisor.KernelParams...),
			VCPUs:        c.Hypervisor.VCPUs, MemoryMiB: c.Hypervisor.MemoryMiB, Agent: ep,
			Template: &hypervisor.Template{Dir: bad, Restore: true},
		}, launch.QEMUOptions(c))
		if err != nil {
			t.Fatal(err)
		}
		err = vm.Start(withTimeout(t, time.Minute))
		if err == nil {
			_ = vm.Stop(context.Background())
			t.Fatal("a clone of a corrupt state started")
		}
		t.Logf("start error: %v", err)
		if !strings.Contains(err.Error(), "restoring from the template") {
			t.Errorf("start error %q does not say the restore failed", err)
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "console.log") {
				t.Errorf("%s left in the state directory", e.Name())
			}
		}
		if pid := vm.Describe().PID; pid != 0 && e2e.Alive(pid) {
			t.Errorf("qemu pid %d still runs", pid)
		}
	})

	after, err := os.ReadFile(filepath.Join(tdir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("the template state file changed")
	}
}

// fileDigest returns the SHA-256 of a file, in hex.
func fileDigest(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }() // read-only
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// guestRandom is what a clone's guest reads from its kernel's RNG.
type guestRandom struct{ urandom, uuid, bootID string }

var (
	reRandom = regexp.MustCompile(`(?m)^rnd=([0-9a-f]{64})\r?$`)
	reUUID   = regexp.MustCompile(`(?m)^uuid=([0-9a-f-]{36})\r?$`)
	reBootID = regexp.MustCompile(`(?m)^boot=([0-9a-f-]{36})\r?$`)
)

// readGuestRandom reads 32 bytes of /dev/urandom, a random UUID and the
// boot ID in the guest, through the debug console.
func readGuestRandom(t *testing.T, ctx context.Context, client *agentclient.Client) guestRandom {
	t.Helper()
	id := client.NewStreamID()
	stream, err := client.OpenStream(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stream.Close() }()
	if _, err := client.System().DebugConsole(ctx, &agent.DebugConsoleRequest{StreamId: id, Width: 200, Height: 40}); err != nil {
		t.Fatalf("debug console: %v", err)
	}
	script := "echo rnd=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n')\n" +
		"echo uuid=$(cat /proc/sys/kernel/random/uuid)\n" +
		"echo boot=$(cat /proc/sys/kernel/random/boot_id)\n" +
		"exit\n"
	if _, err := io.WriteString(stream, script); err != nil {
		t.Fatal(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = stream.SetReadDeadline(dl)
	}
	out, err := io.ReadAll(io.LimitReader(stream, 64<<10))
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("reading the console: %v (read %q)", err, out)
	}
	var r guestRandom
	for _, f := range []struct {
		re  *regexp.Regexp
		dst *string
	}{{reRandom, &r.urandom}, {reUUID, &r.uuid}, {reBootID, &r.bootID}} {
		m := f.re.FindSubmatch(out)
		if m == nil {
			t.Fatalf("no %s line in the console output %q", f.re, out)
		}
		*f.dst = string(m[1])
	}
	return r
}

// TestTemplateEntropy restores two clones from one template in each memory
// mode, reseeds each guest's RNG with AddEntropy as a sandbox does, and
// checks that they read different bytes from /dev/urandom and different
// random UUIDs. Linux makes the boot ID at its first read; nothing reads it
// in the template before the save, so each clone makes its own: it is
// logged, not asserted. It runs on the debug image (Debian's kernel) for
// its shell.
func TestTemplateEntropy(t *testing.T) {
	c := testConfig(t)
	c.Image.AssetsDir = debugImage(t)
	c.Hypervisor.KernelParams = append(c.Hypervisor.KernelParams, channel.ParamDebugConsole+"=1")
	c.Hypervisor.FreePageReporting = false // for the shared clones
	tdir := makeTemplate(t, c)
	for _, mode := range []hypervisor.TemplateMemory{hypervisor.TemplateMemoryPrivate, hypervisor.TemplateMemoryShared} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := withTimeout(t, 3*time.Minute)
			var got []guestRandom
			for i := range 2 {
				id := "rng-" + string(mode) + string(rune('a'+i))
				tv, _ := startTemplateVM(t, c, id, &hypervisor.Template{Dir: tdir, Restore: true, Memory: mode})
				seed := make([]byte, 64)
				if _, err := rand.Read(seed); err != nil {
					t.Fatal(err)
				}
				if _, err := tv.client.System().AddEntropy(ctx, &agent.AddEntropyRequest{Data: seed}); err != nil {
					t.Fatalf("%s: adding entropy: %v", id, err)
				}
				got = append(got, readGuestRandom(t, ctx, tv.client))
			}
			t.Logf("clones: %+v", got)
			if got[0].urandom == got[1].urandom {
				t.Errorf("two clones read the same bytes from /dev/urandom: %s", got[0].urandom)
			}
			if got[0].uuid == got[1].uuid {
				t.Errorf("two clones made the same random uuid: %s", got[0].uuid)
			}
			t.Logf("boot ids %s and %s", got[0].bootID, got[1].bootID)
		})
	}
}

// createPodTemplate creates the template of c's pod VM with
// sandbox.CreateTemplate (what `hull factory template create` runs), its
// VM named id, and returns the template's key.
func createPodTemplate(t testing.TB, ctx context.Context, c *config.Config, id string) string {
	t.Helper()
	sc, err := launch.SandboxConfig(c, id)
	if err != nil {
		t.Fatal(err)
	}
	key, err := sandbox.CreateTemplate(ctx, sc)
	if err != nil {
		t.Fatalf("creating the template: %v", err)
	}
	return key
}

// TestTemplateSandbox creates the template of a pod VM configuration with
// sandbox.CreateTemplate (what `hull factory template create` runs), starts
// two sandboxes of that configuration, which restore from it, and runs a
// container in each: its root comes through the virtio-fs share hot-added
// after the restore, and it sees the hostname and clock the start set; the
// first grows by CPU and memory hotplug as a booted VM does. A sandbox
// with a pod network is restored too, its NIC hot-added after the restore
// (templateNetworkPod); with the template's state damaged, such a sandbox
// boots instead. A sandbox of another configuration (one more vCPU) finds
// no template and boots.
func TestTemplateSandbox(t *testing.T) {
	c, _ := hullKernelConfig(t)
	c.Factory.Template = true
	c.Factory.TemplateDir = t.TempDir()
	ctx := withTimeout(t, 5*time.Minute)
	key := createPodTemplate(t, ctx, c, "tplcreate")
	sc, err := launch.SandboxConfig(c, "tplcreate")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sandbox.CreateTemplate(ctx, sc); !errdefs.IsAlreadyExists(err) {
		t.Errorf("creating it again: %v, want already exists", err)
	}
	ents, _ := os.ReadDir(c.Factory.TemplateDir)
	if len(ents) != 1 || ents[0].Name() != key {
		t.Errorf("template dir holds %v, want only %s", ents, key)
	}

	for _, id := range []string{"tplsb1", "tplsb2"} {
		sb := startSandbox(t, c, id)
		if !sb.Restored() {
			t.Fatalf("%s booted instead of restoring from template %s", id, key)
		}
		bundle, spec := busyboxBundle(t, "sh", "-c", "hostname; date +%s")
		r := runContainer(t, sb, "c-"+id, bundle, spec)
		lines := strings.Fields(r.stdout)
		if r.status != 0 || len(lines) != 2 {
			t.Fatalf("%s: container status %d, output %q, stderr %q", id, r.status, r.stdout, r.stderr)
		}
		if lines[0] != "hull-test" {
			t.Errorf("%s: container hostname %q", id, lines[0])
		}
		guestNow, _ := strconv.ParseInt(lines[1], 10, 64)
		if d := time.Since(time.Unix(guestNow, 0)); d < -5*time.Second || d > time.Minute {
			t.Errorf("%s: guest clock off by %v: the clock of a clone was not set", id, d)
		}
		if id == "tplsb1" {
			// The template's CPU and memory hotplug headroom carries over.
			if err := sb.Resize(ctx, c.Hypervisor.VCPUs+1, c.Hypervisor.MemoryMiB+128); err != nil {
				t.Fatalf("%s: growing a restored vm: %v", id, err)
			}
			d, err := sb.System().GuestDetails(ctx, &agent.GuestDetailsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if d.GetCpus() != c.Hypervisor.VCPUs+1 {
				t.Errorf("%s: %d cpus online after growing, want %d", id, d.GetCpus(), c.Hypervisor.VCPUs+1)
			}
		}
		if err := sb.Stop(ctx); err != nil {
			t.Errorf("stopping %s: %v", id, err)
		}
	}

	// A pod with a network: the clone has no NIC of the template's, the
	// pod's eth0 is hot-added once it runs and answers on the pod
	// address; nothing of hull's is left in the pod namespace after.
	t.Run("network", func(t *testing.T) { templateNetworkPod(t, c, "tplnet", "198.18.16", true) })
	// A damaged template: the restore fails, the VM boots instead, and
	// the pod's network is hot-added into the slots it reserves all the
	// same.
	t.Run("damaged template", func(t *testing.T) {
		state := filepath.Join(c.Factory.TemplateDir, key, "state")
		if err := os.WriteFile(state, []byte("not a migration stream"), 0o600); err != nil {
			t.Fatal(err)
		}
		templateNetworkPod(t, c, "tpldamaged", "198.18.17", false)
	})

	c.Hypervisor.VCPUs++
	sb := startSandbox(t, c, "tplother")
	if sb.Restored() {
		t.Error("a sandbox of another vm configuration restored from the template")
	}
	if err := sb.Stop(ctx); err != nil {
		t.Error(err)
	}
}

// TestTemplateRootfs makes a template of a VM booted from the erofs root
// image (image kind rootfs, virtio-pmem) and restores sandboxes from it:
// the image's region is mapped shared and read-only, so x-ignore-shared
// leaves it out of the state file (smaller than the image), the clones
// map the same file (read-only, shared, no anonymous page), run a
// container with the guest's root still erofs with DAX, and the image is
// unchanged after.
func TestTemplateRootfs(t *testing.T) {
	c, m := rootfsConfig(t, guestimage.KindRootfs)
	c.Factory.Template = true
	c.Factory.TemplateDir = t.TempDir()
	image := m.RootfsPath(c.Image.AssetsDir)
	before := fileDigest(t, image)
	ctx := withTimeout(t, 5*time.Minute)
	key := createPodTemplate(t, ctx, c, "tplrootcreate")
	ist, err := os.Stat(image)
	if err != nil {
		t.Fatal(err)
	}
	sst, err := os.Stat(filepath.Join(c.Factory.TemplateDir, key, "state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("root image %d bytes, template state %d bytes", ist.Size(), sst.Size())
	if sst.Size() >= ist.Size() {
		t.Errorf("the template state (%d bytes) is not smaller than the root image (%d bytes): the image's region was copied into it", sst.Size(), ist.Size())
	}
	for _, id := range []string{"tplroot1", "tplroot2"} {
		sb := startSandbox(t, c, id)
		if !sb.Restored() {
			t.Fatalf("%s booted instead of restoring from template %s", id, key)
		}
		bundle, spec := busyboxBundle(t, "sh", "-c", "cat /proc/1/task/*/mounts | sort -u; hostname")
		spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
		r := runContainer(t, sb, "c-"+id, bundle, spec)
		if r.status != 0 {
			t.Fatalf("%s: container status %d, stdout %q, stderr %q", id, r.status, r.stdout, r.stderr)
		}
		if !rootMountPattern.MatchString(r.stdout) {
			t.Errorf("%s: the guest's root is not erofs mounted ro with dax:\n%s", id, r.stdout)
		}
		mp, err := smapsOf(sb.VM().Describe().PID, image)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: QEMU's mapping of the image: %s, Rss %d KiB, Anonymous %d KiB", id, mp.perms, mp.rssKiB, mp.anonKiB)
		if mp.perms != "r--s" {
			t.Errorf("%s: QEMU maps the image %s, want r--s (read-only, shared)", id, mp.perms)
		}
		if mp.anonKiB != 0 {
			t.Errorf("%s: %d KiB of the image's mapping are anonymous copies, want 0", id, mp.anonKiB)
		}
		if err := sb.Stop(ctx); err != nil {
			t.Errorf("stopping %s: %v", id, err)
		}
	}
	if after := fileDigest(t, image); after != before {
		t.Error("the root image changed under its template and clones")
	}
}

// templateNetworkPod starts sandbox id of c with a pod network of subnet
// (<subnet>.2/24 in the pod) and checks that it was restored from its
// template (or booted, !restored), that the guest has eth0 with the pod
// address and answers ping from the veth's peer, and that after Stop the
// pod namespace holds nothing of hull's.
func templateNetworkPod(t *testing.T, c *config.Config, id, subnet string, restored bool) {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (busybox-static) is needed for ping: %v", err)
	}
	ctx := withTimeout(t, 3*time.Minute)
	pod, peer := newPodNetns(t, subnet)
	sc, err := launch.SandboxConfig(c, id)
	if err != nil {
		t.Fatal(err)
	}
	sc.NetNS = filepath.Join("/run/netns", pod.name)
	start := time.Now()
	sb, err := sandbox.Start(ctx, sc)
	if err != nil {
		t.Fatalf("starting a sandbox with a network: %v", err)
	}
	t.Logf("sandbox %s started in %v (restored %v): %v", id, time.Since(start).Round(time.Millisecond), sb.Restored(), sb.BootPhases())
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = sb.Stop(context.Background())
		}
	})
	if sb.Restored() != restored {
		t.Fatalf("sandbox %s: restored from its template %v, want %v", id, sb.Restored(), restored)
	}
	ifs, err := sb.Agent().Network().ListInterfaces(ctx, &agent.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	addr := subnet + ".2"
	i := slices.IndexFunc(ifs.GetInterfaces(), func(in *agent.Interface) bool { return in.GetName() == "eth0" })
	if i < 0 || !slices.Contains(ifs.GetInterfaces()[i].GetAddresses(), addr+"/24") {
		t.Errorf("guest interfaces %v: want eth0 with %s/24", ifs.GetInterfaces(), addr)
	}
	out, err := exec.Command("ip", "netns", "exec", peer.name, busybox, "ping", "-c", "3", "-W", "5", addr).CombinedOutput()
	if err != nil {
		t.Errorf("ping of the pod's address from the peer: %v\n%s", err, out)
	}
	stopped = true
	if err := sb.Stop(context.Background()); err != nil {
		t.Errorf("stopping the sandbox: %v", err)
	}
	noHullLeft(t, pod)
}
