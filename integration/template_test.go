package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
)

// templateVM is one VM of the template tests with its agent client.
type templateVM struct {
	vm     *qemu.VM
	client *agentclient.Client
	dir    string
}

// startTemplateVM starts a VM of config c on the hull kernel with template
// t, and dials its agent. The returned stop ends both and removes the
// state directory; it is also a test cleanup.
func startTemplateVM(t *testing.T, c *config.Config, id string, tpl *hypervisor.Template) (*templateVM, func()) {
	t.Helper()
	ctx := withTimeout(t, 3*time.Minute)
	kernel, initrd, err := launch.Assets(c, false)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(c.Runtime.StateDir, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ep := hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName}
	vm, err := qemu.New(hypervisor.Config{
		ID:           id,
		StateDir:     dir,
		Kernel:       kernel,
		Initrd:       initrd,
		KernelParams: append(agentclient.KernelParams(ep, "info"), c.Hypervisor.KernelParams...),
		VCPUs:        c.Hypervisor.VCPUs,
		MemoryMiB:    c.Hypervisor.MemoryMiB,
		Agent:        ep,
		Template:     tpl,
	}, launch.QEMUOptions(c))
	if err != nil {
		t.Fatal(err)
	}
	tv := &templateVM{vm: vm, dir: dir}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if tv.client != nil {
			_ = tv.client.Close()
		}
		if err := vm.Stop(context.Background()); err != nil {
			t.Errorf("stopping vm %s: %v", id, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	if err := vm.Start(ctx); err != nil {
		t.Fatalf("starting vm %s: %v", id, err)
	}
	tv.client, err = agentclient.Dial(ctx, vm.Agent(), agentclient.Options{
		DialTimeout: c.Agent.DialTimeout.Duration, CallTimeout: c.Agent.CallTimeout.Duration, Abort: vm.Done(),
	})
	if err != nil {
		t.Fatalf("dialing the agent of %s: %v\n%s", id, err, strings.Join(vm.ConsoleTail(20), "\n"))
	}
	return tv, stop
}

// makeTemplate boots a template VM in a new template directory, checks
// that its agent answers, closes the connection and saves it.
func makeTemplate(t *testing.T, c *config.Config) string {
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
					if _, err := os.Stat(filepath.Join(tv.dir, "memory")); err != nil {
						t.Errorf("%s: no private memory copy: %v", id, err)
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
	after, err := os.ReadFile(filepath.Join(tdir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("the template state file changed")
	}
}

// fileDigest returns the SHA-256 of a file, in hex.
func fileDigest(t *testing.T, path string) string {
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
