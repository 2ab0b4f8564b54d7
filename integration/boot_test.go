package integration

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/version"
)

// startSandbox boots a sandbox of c and registers its stop.
func startSandbox(t testing.TB, c *config.Config, id string) *sandbox.Sandbox {
	t.Helper()
	return startSandboxEdited(t, c, id, nil)
}

// startSandboxEdited is startSandbox with edit (if not nil) applied to
// the sandbox's configuration first: for what the configuration file
// cannot say.
func startSandboxEdited(t testing.TB, c *config.Config, id string, edit func(*sandbox.Config)) *sandbox.Sandbox {
	t.Helper()
	sc, err := launch.SandboxConfig(c, id)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&sc)
	}
	sb, err := sandbox.Start(withTimeout(t, 2*time.Minute), sc)
	if err != nil {
		t.Fatalf("starting sandbox: %v", err)
	}
	t.Cleanup(func() {
		if sb.State() == sandbox.StateRunning {
			_ = sb.Stop(context.Background())
		}
	})
	return sb
}

func TestBoot(t *testing.T) {
	for _, machine := range []string{"q35", "microvm"} {
		t.Run(machine, func(t *testing.T) {
			c := testConfig(t)
			c.Hypervisor.QEMU.Machine = machine
			c.Agent.Transport = "serial"
			sb := startSandbox(t, c, "boot-"+machine)
			ctx := withTimeout(t, time.Minute)
			desc := sb.VM().Describe()
			if desc.Machine != machine {
				t.Errorf("machine %q, want %q", desc.Machine, machine)
			}

			// The agent reports SERVING once the modules of all features are in.
			var health *agent.HealthResponse
			for i := 0; i < 100; i++ {
				h, err := sb.System().Health(ctx, &agent.HealthRequest{})
				if err != nil {
					t.Fatalf("health: %v", err)
				}
				health = h
				if h.GetStatus() == agent.HealthResponse_STATUS_SERVING {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if health.GetStatus() != agent.HealthResponse_STATUS_SERVING {
				t.Fatalf("agent status %s after 10s, want SERVING", health.GetStatus())
			}
			if health.GetAgentVersion() != version.Version && health.GetAgentVersion() == "" {
				t.Errorf("empty agent version")
			}

			d, err := sb.System().GuestDetails(ctx, &agent.GuestDetailsRequest{})
			if err != nil {
				t.Fatalf("guest details: %v", err)
			}
			if d.GetKernelRelease() != env.manifest.Kernel.Release {
				t.Errorf("guest kernel %q, manifest says %q", d.GetKernelRelease(), env.manifest.Kernel.Release)
			}
			if d.GetCpus() != c.Hypervisor.VCPUs {
				t.Errorf("guest sees %d cpus, configured %d", d.GetCpus(), c.Hypervisor.VCPUs)
			}
			total := d.GetMemoryTotalBytes() >> 20
			if total == 0 || total > uint64(c.Hypervisor.MemoryMiB) || total < uint64(c.Hypervisor.MemoryMiB)/2 {
				t.Errorf("guest memory %d MiB, configured %d MiB", total, c.Hypervisor.MemoryMiB)
			}
			if !strings.HasPrefix(d.GetTransport(), "serial") {
				t.Errorf("transport %q, want serial", d.GetTransport())
			}
			for _, f := range []string{"serial", "virtio-fs", "net"} {
				if !contains(d.GetFeatures(), f) {
					t.Errorf("feature %q missing from %v", f, d.GetFeatures())
				}
			}
			if len(d.GetWarnings()) > 0 {
				t.Errorf("guest warnings: %v", d.GetWarnings())
			}
			// The boot's milestones on the guest clock come in order.
			if st, sv, fa := d.GetAgentStart().AsDuration(), d.GetBootToServe().AsDuration(), d.GetFirstAnswer().AsDuration(); st <= 0 || sv < st || fa < sv || fa > health.GetUptime().AsDuration() {
				t.Errorf("guest clock: agent main %v, serving %v, first answer %v, uptime %v: want 0 < main <= serving <= first answer <= uptime",
					st, sv, fa, health.GetUptime().AsDuration())
			}
			// The transport's driver: a loaded module, or built into the
			// image's kernel (the hull kernel: no modules at all).
			if contains(env.manifest.Builtin, "serial") {
				if len(d.GetModules()) > 0 {
					t.Errorf("modules %v loaded by a kernel without modules", d.GetModules())
				}
			} else if !contains(d.GetModules(), "virtio_console") {
				t.Errorf("virtio_console not among loaded modules %v", d.GetModules())
			}

			// Start synced the clock; a second sync finds it close to ours.
			resp, err := sb.System().SetTime(ctx, &agent.SetTimeRequest{Time: timestampNow()})
			if err != nil {
				t.Fatalf("set time: %v", err)
			}
			if skew := time.Since(resp.GetPrevious().AsTime()); skew > 5*time.Second || skew < -5*time.Second {
				t.Errorf("guest clock off by %s after the start-up sync", skew)
			}

			pid := desc.PID
			if err := sb.Stop(ctx); err != nil {
				t.Fatalf("stop: %v", err)
			}
			exit, err := sb.VM().Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !exit.Requested && exit.Code != 0 {
				t.Errorf("vm ended with %s after an orderly shutdown", exit)
			}
			if e2e.Alive(pid) {
				t.Errorf("qemu %d still alive after stop", pid)
			}
		})
	}
}

// TestAgentNeverAnswers boots an init that never serves: the start fails
// within the dial timeout with the console tail in the error.
func TestAgentNeverAnswers(t *testing.T) {
	c := testConfig(t)
	c.Agent.Transport = "serial"
	c.Hypervisor.Initrd = customInitrd(t, env.silentInit)
	c.Agent.DialTimeout = config.Duration{Duration: 8 * time.Second}
	// The bound itself, not stretched by the host's load.
	c.Agent.DialTimeoutMaxScale = 1
	sc, err := launch.SandboxConfig(c, "silent")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = sandbox.Start(withTimeout(t, time.Minute), sc)
	took := time.Since(start)
	if err == nil {
		t.Fatal("sandbox started with an init that never answers")
	}
	t.Logf("error after %s: %v", took, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error is not a deadline error: %v", err)
	}
	if !strings.Contains(err.Error(), "hull-test: silent init started") {
		t.Errorf("error lacks the console tail: %v", err)
	}
	// The dial timeout bounds the wait; the slack covers QEMU start and the
	// rollback, not the guest.
	if took > c.Agent.DialTimeout.Duration+10*time.Second {
		t.Errorf("start failed after %s, dial timeout is %s", took, c.Agent.DialTimeout.Duration)
	}
}

// TestVMDiesDuringBoot boots a kernel that panics (no init): the start fails
// as soon as QEMU exits, saying so, with the panic in the console tail.
func TestVMDiesDuringBoot(t *testing.T) {
	c := testConfig(t)
	c.Agent.Transport = "serial"
	c.Hypervisor.KernelParams = []string{"rdinit=/no-such-init"}
	sc, err := launch.SandboxConfig(c, "panics")
	if err != nil {
		t.Fatal(err)
	}
	_, err = sandbox.Start(withTimeout(t, time.Minute), sc)
	if err == nil {
		t.Fatal("sandbox started without an init")
	}
	t.Logf("error: %v", err)
	if !hypervisor.IsExited(err) {
		t.Errorf("error does not say the vm exited: %v", err)
	}
	if !strings.Contains(err.Error(), "Kernel panic") {
		t.Errorf("error lacks the kernel panic from the console: %v", err)
	}
}

// TestAgentStopsAnswering freezes a booted VM: calls fail with a deadline
// error within the call timeout, and Stop still removes everything.
func TestAgentStopsAnswering(t *testing.T) {
	c := testConfig(t)
	c.Agent.Transport = "serial"
	c.Agent.CallTimeout = config.Duration{Duration: 3 * time.Second}
	sb := startSandbox(t, c, "frozen")
	p, err := hypervisor.AsPauser(sb.VM())
	if err != nil {
		t.Fatal(err)
	}
	ctx := withTimeout(t, time.Minute)
	if err := p.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	start := time.Now()
	_, err = sb.System().Health(ctx, &agent.HealthRequest{})
	if err == nil {
		t.Fatal("a paused guest answered")
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errdefs.IsDeadlineExceeded(err) {
		t.Errorf("error is not a deadline error: %v", err)
	}
	if took := time.Since(start); took > c.Agent.CallTimeout.Duration+5*time.Second {
		t.Errorf("call failed after %s, call timeout %s", took, c.Agent.CallTimeout.Duration)
	}
	if err := p.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if _, err := sb.System().Health(ctx, &agent.HealthRequest{}); err != nil {
		t.Errorf("agent does not answer after resume: %v", err)
	}
	if err := p.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	// Stop must not hang on a guest that cannot answer.
	if err := sb.Stop(ctx); err != nil {
		t.Logf("stop of a frozen guest: %v", err)
	}
}

// TestVsockTransport uses vsock where the host has vhost-vsock; elsewhere
// (this CI machine) it checks that asking for it fails clearly and leaves
// nothing behind.
func TestVsockTransport(t *testing.T) {
	c := testConfig(t)
	c.Agent.Transport = "vsock"
	sc, err := launch.SandboxConfig(c, "vsock")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := sandbox.Start(withTimeout(t, 2*time.Minute), sc)
	if _, statErr := os.Stat(launch.VhostVsockDevice); statErr == nil {
		if err != nil {
			t.Fatalf("vsock boot: %v", err)
		}
		defer func() { _ = sb.Stop(context.Background()) }()
		d, err := sb.System().GuestDetails(withTimeout(t, time.Minute), &agent.GuestDetailsRequest{})
		if err != nil || !strings.HasPrefix(d.GetTransport(), "vsock") {
			t.Fatalf("guest details over vsock: %v %v", d, err)
		}
		return
	}
	if err == nil {
		_ = sb.Stop(context.Background())
		t.Fatal("vsock sandbox started on a host without " + launch.VhostVsockDevice)
	}
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), "vhost-vsock") {
		t.Errorf("error does not name vhost-vsock: %v", err)
	}
}

func TestAutoTransport(t *testing.T) {
	c := testConfig(t)
	// "auto" takes vsock where the device opens (the test image has every
	// feature, vsock among them).
	want := hypervisor.TransportSerial
	if f, err := os.OpenFile(launch.VhostVsockDevice, os.O_RDWR, 0); err == nil {
		_ = f.Close()
		want = hypervisor.TransportVsock
	}
	if got := launch.Transport(c); got != want {
		t.Errorf("auto transport %q, want %q", got, want)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
