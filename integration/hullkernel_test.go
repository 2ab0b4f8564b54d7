package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
)

// HullKernelAssetsEnv names the directory of the guest image built with the
// hull kernel (`make image-hullkernel`: _output/assets-hullkernel), which
// the tests and benchmarks of the hull kernel use beside HULL_ASSETS_DIR.
const HullKernelAssetsEnv = "HULL_TEST_ASSETS_HULLKERNEL"

// hullKernelAssets returns the hull kernel's image directory and manifest,
// or fails: the tests that need it do not skip.
func hullKernelAssets(t testing.TB) (string, *guestimage.Manifest) {
	t.Helper()
	dir := os.Getenv(HullKernelAssetsEnv)
	if dir == "" {
		t.Fatalf("%s is not set: it names the guest image built with the hull kernel; run `make integration` (or `make image-hullkernel` and set it to _output/assets-hullkernel)", HullKernelAssetsEnv)
	}
	m, err := guestimage.ReadManifest(dir)
	if err != nil {
		t.Fatalf("%s: %v (run `make image-hullkernel`)", HullKernelAssetsEnv, err)
	}
	if err := m.Verify(dir); err != nil {
		t.Fatalf("%s: %v", HullKernelAssetsEnv, err)
	}
	if m.Kernel.Local == nil || len(m.Modules) != 0 {
		t.Fatalf("%s=%s is not a hull kernel image: kernel %+v, %d modules", HullKernelAssetsEnv, dir, m.Kernel, len(m.Modules))
	}
	return dir, m
}

// hullKernelConfig is containerConfig with the hull kernel's image.
func hullKernelConfig(t *testing.T) (*config.Config, *guestimage.Manifest) {
	t.Helper()
	dir, m := hullKernelAssets(t)
	c := containerConfig(t)
	c.Image.AssetsDir = dir
	return c, m
}

// TestHullKernel boots the agent on the hull kernel (everything built in,
// no modules) on q35 and microvm, checks what it reports, runs a container
// whose root and a volume come through virtio-fs, and grows the q35 VM by
// CPU and memory hotplug.
func TestHullKernel(t *testing.T) {
	for _, machine := range []string{"q35", "microvm"} {
		t.Run(machine, func(t *testing.T) {
			c, m := hullKernelConfig(t)
			c.Hypervisor.QEMU.Machine = machine
			sb := startSandbox(t, c, "hullkernel-"+machine)
			ctx := withTimeout(t, 2*time.Minute)

			// Nothing to load: the agent is SERVING at once.
			h, err := sb.System().Health(ctx, &agent.HealthRequest{})
			if err != nil {
				t.Fatalf("health: %v", err)
			}
			if h.GetStatus() != agent.HealthResponse_STATUS_SERVING {
				t.Errorf("agent status %s with nothing to load, want SERVING", h.GetStatus())
			}
			d := guestDetails(t, sb)
			t.Logf("guest: kernel %s, features %v, modules %v, boot to serve %s",
				d.GetKernelRelease(), d.GetFeatures(), d.GetModules(), d.GetBootToServe().AsDuration())
			if d.GetKernelRelease() != m.Kernel.Release || !strings.HasSuffix(d.GetKernelRelease(), "-hull") {
				t.Errorf("guest kernel %q, want the hull kernel %q", d.GetKernelRelease(), m.Kernel.Release)
			}
			want := slices.Sorted(slices.Values(m.Builtin))
			if got := slices.Sorted(slices.Values(d.GetFeatures())); len(want) == 0 || !slices.Equal(got, want) {
				t.Errorf("guest features %q, want the built-in %q", got, want)
			}
			if len(d.GetModules()) != 0 {
				t.Errorf("the agent loaded modules %v from a kernel without any", d.GetModules())
			}
			if len(d.GetWarnings()) > 0 {
				t.Errorf("guest warnings: %v", d.GetWarnings())
			}

			// A container: its root and a read-write volume through
			// virtio-fs, cgroup v2 with its controllers, namespaces (runc's
			// example spec has them) and seccomp; the file systems the
			// runtime and the images use are there; free page reporting
			// reports single pages (the driver's order, which the balloon
			// driver overwrote at boot and the agent set again).
			vol := t.TempDir()
			bundle, spec := busyboxBundle(t, "sh", "-c", strings.Join([]string{
				"echo from-guest > /vol/out",
				"echo rooted > /root-write",
				"cat /proc/filesystems",
				`echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"`,
				"grep -E '^Seccomp:' /proc/self/status",
				`echo "reporting order: $(cat /sys/module/page_reporting/parameters/page_reporting_order)"`,
				"hostname",
			}, " && "))
			spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/vol", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}})
			// A seccomp filter, which the kernel must install (Seccomp: 2).
			spec.Linux.Seccomp = &specs.LinuxSeccomp{
				DefaultAction: specs.ActAllow,
				Syscalls:      []specs.LinuxSyscall{{Names: []string{"swapon"}, Action: specs.ActErrno}},
			}
			r := runContainer(t, sb, "probe", bundle, spec)
			if r.status != 0 {
				t.Fatalf("container: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
			}
			for _, s := range []string{
				"\toverlay\n", "\tvirtiofs\n", "\text4\n", "\terofs\n", "\tcgroup2\n", "\tmqueue\n", "\tdevpts\n",
				"Seccomp:\t2", "hull-test", "reporting order: 0\n",
			} {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("container output %q lacks %q (stderr %q)", r.stdout, s, r.stderr)
				}
			}
			// The controllers runc's libcontainer uses on cgroup v2.
			var controllers []string
			for _, line := range strings.Split(r.stdout, "\n") {
				if rest, ok := strings.CutPrefix(line, "controllers: "); ok {
					controllers = strings.Fields(rest)
				}
			}
			for _, want := range []string{"cpu", "cpuset", "io", "memory", "pids", "hugetlb"} {
				if !slices.Contains(controllers, want) {
					t.Errorf("the container's cgroup has controllers %q, without %s", controllers, want)
				}
			}
			if b, err := os.ReadFile(filepath.Join(vol, "out")); err != nil || string(b) != "from-guest\n" {
				t.Errorf("volume file through virtio-fs: %q, %v", b, err)
			}
			if b, err := os.ReadFile(filepath.Join(bundle, "rootfs", "root-write")); err != nil || string(b) != "rooted\n" {
				t.Errorf("root file through virtio-fs: %q, %v", b, err)
			}
		})
	}

	// vCPU and memory hotplug, with a container in the new memory.
	t.Run("hotplug", func(t *testing.T) {
		c, _ := hullKernelConfig(t)
		testHotplugQ35(t, c)
	})
}
