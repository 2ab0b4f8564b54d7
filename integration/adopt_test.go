package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/startcount"
)

// startWarm boots a warm sandbox as a VM factory would: a placeholder ID,
// a cgroup of its own (below the test's cgroup parent), NIC hotplug slots
// and no pod network. stop stops the sandbox (the test's end does, when
// the test did not).
func startWarm(t *testing.T, ctx context.Context, c *config.Config) (sb *sandbox.Sandbox, wc sandbox.Config, stop func()) {
	t.Helper()
	id, err := sandbox.NewWarmID()
	if err != nil {
		t.Fatal(err)
	}
	wc, err = launch.SandboxConfig(c, id)
	if err != nil {
		t.Fatal(err)
	}
	wc.VM.HotplugNICs = 2
	sb, err = sandbox.StartWarm(ctx, wc)
	if err != nil {
		t.Fatalf("starting the warm sandbox: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = sb.Stop(context.Background())
		}
	})
	if !sb.Warm() || sb.ID() != id || sb.StateDir() != sandbox.StateDir(c.Runtime.StateDir, id) {
		t.Fatalf("warm sandbox %s in %s (warm %v), want %s", sb.ID(), sb.StateDir(), sb.Warm(), id)
	}
	stop = func() {
		stopped = true
		if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
			t.Errorf("stopping: %v", err)
		}
	}
	return sb, wc, stop
}

// adoptConfig is c's configuration for the pod id: wc's warm VM can serve
// it.
func adoptConfig(t *testing.T, c *config.Config, id string) sandbox.Config {
	t.Helper()
	pc, err := launch.SandboxConfig(c, id)
	if err != nil {
		t.Fatal(err)
	}
	pc.VM.HotplugNICs = 2
	pc.Cgroup.Path = "/" + c.Runtime.CgroupParent + "/pod-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	return pc
}

// inCgroup reports whether pid is listed in the cgroup.procs of every
// hierarchy's directory of the cgroup rel (below the cgroup root), and
// that there is at least one.
func inCgroup(t *testing.T, rel string, pid int) bool {
	t.Helper()
	dirs := cgroupDirs(rel)
	if len(dirs) == 0 {
		t.Errorf("no directory for cgroup %s", rel)
		return false
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			t.Errorf("reading %s: %v", d, err)
			return false
		}
		if !slices.Contains(strings.Fields(string(b)), strconv.Itoa(pid)) {
			t.Errorf("pid %d not in %s/cgroup.procs", pid, d)
			return false
		}
	}
	return true
}

// TestAdoptWarmSandbox boots a warm sandbox (StartWarm) and has a pod adopt
// it with a configuration of its own: another ID, a network namespace set
// up as CNI would (a veth with 198.18.15.2/24), a hostname, more memory and
// a cgroup. A container of the pod sees the pod's hostname, the address on
// eth0 and the grown memory; the state directory carries the pod's name
// and the warm one is gone; QEMU and virtiofsd are in the pod's cgroup and
// the warm cgroup is gone. Stop leaves nothing (the test configuration's
// leak checks: no process, state directory, cgroup or mount). An adoption
// that fails midway, and a pod whose configuration the warm VM cannot meet
// (refused with ErrNotAdoptable), leave a sandbox whose Stop leaves nothing
// either.
func TestAdoptWarmSandbox(t *testing.T) {
	t.Run("adopted", func(t *testing.T) {
		c := containerConfig(t)
		c.Hypervisor.QEMU.Machine = qemu.MachineQ35
		c.Hypervisor.VCPUs, c.Hypervisor.MemoryMiB = 1, 512
		c.Hypervisor.MaxVCPUs, c.Hypervisor.MaxMemoryMiB = 2, 1024
		ctx := withTimeout(t, 4*time.Minute)
		sb, wc, stop := startWarm(t, ctx, c)
		warmDir := sb.StateDir()
		procs := sb.HostProcesses()
		vmm, vfs := procs["vmm"], procs["virtiofsd"]
		if vmm.PID == 0 || vfs.PID == 0 {
			t.Fatalf("warm sandbox processes %v", procs)
		}
		if !inCgroup(t, wc.Cgroup.Path, vmm.PID) {
			t.Fatalf("qemu is not in the warm cgroup %s", wc.Cgroup.Path)
		}

		pod, _ := newPodNetns(t, "198.18.15")
		pc := adoptConfig(t, c, "adopt-pod@default")
		pc.NetNS = filepath.Join("/run/netns", pod.name)
		pc.Hostname = "adopted-pod"
		pc.VM.MemoryMiB = 768
		before := readStartCounts(t, c.Runtime.StateDir)
		start := time.Now()
		if err := sb.Adopt(ctx, pc); err != nil {
			t.Fatalf("adopting: %v", err)
		}
		if after := readStartCounts(t, c.Runtime.StateDir); after.SandboxOK != before.SandboxOK+1 || after.SandboxError != before.SandboxError {
			t.Errorf("start counts went from %+v to %+v, want one more started sandbox", before, after)
		}
		t.Logf("adopted in %s: %v", time.Since(start).Round(time.Millisecond), sb.BootPhases())
		if sb.Warm() || sb.ID() != pc.ID {
			t.Errorf("adopted sandbox is %s (warm %v), want %s", sb.ID(), sb.Warm(), pc.ID)
		}
		wantDir := sandbox.StateDir(c.Runtime.StateDir, pc.ID)
		if sb.StateDir() != wantDir {
			t.Errorf("state directory %s, want %s", sb.StateDir(), wantDir)
		}
		if _, err := os.Stat(warmDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the warm state directory %s is still there: %v", warmDir, err)
		}
		if dir, id, err := sandbox.Find(c.Runtime.StateDir, "adopt-pod"); err != nil || dir != wantDir || id != pc.ID {
			t.Errorf("the record finds %s in %s (%v), want %s in %s", id, dir, err, pc.ID, wantDir)
		}
		if d := sb.VM().Describe(); d.StateDir != wantDir || filepath.Dir(d.ConsoleLog) != wantDir {
			t.Errorf("the driver's state directory %s and console %s, want them in %s", d.StateDir, d.ConsoleLog, wantDir)
		}
		if tail := sb.VM().ConsoleTail(5); len(tail) == 0 {
			t.Error("the console log is not found after the move")
		}
		inCgroup(t, pc.Cgroup.Path, vmm.PID)
		inCgroup(t, pc.Cgroup.Path, vfs.PID)
		if dirs := cgroupDirs(wc.Cgroup.Path); len(dirs) > 0 {
			t.Errorf("the warm cgroup is still there: %v", dirs)
		}
		if !slices.ContainsFunc(sb.BootPhases(), func(p sandbox.Phase) bool { return p.Name == "move state directory" }) {
			t.Errorf("phases %v: no adoption step", sb.BootPhases())
		}

		// The container shares the guest's UTS and network namespaces: it
		// sees the sandbox's hostname and interfaces.
		bundle, spec := busyboxBundle(t, "sh", "-c", "hostname; ip -o -4 addr show dev eth0; grep MemTotal /proc/meminfo")
		spec.Hostname = ""
		spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool {
			return n.Type == specs.UTSNamespace || n.Type == specs.NetworkNamespace
		})
		writeSpec(t, bundle, spec)
		r := runContainer(t, sb, "adopted-ctr", bundle, spec)
		t.Logf("container: status %d\n%s%s", r.status, r.stdout, r.stderr)
		if r.status != 0 {
			t.Fatalf("container exited %d: %s", r.status, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) == 0 || lines[0] != pc.Hostname {
			t.Errorf("container hostname %q, want %q", lines, pc.Hostname)
		}
		if !strings.Contains(r.stdout, "198.18.15.2/24") {
			t.Errorf("eth0 in the pod: %q, want 198.18.15.2/24", r.stdout)
		}
		if d := guestDetails(t, sb); d.GetMemoryTotalBytes()>>20 < 700 {
			t.Errorf("guest MemTotal %d MiB, want it grown to about 768", d.GetMemoryTotalBytes()>>20)
		}

		// The agent's lines after the move are the pod's, in its directory
		// (the host's field, not the guest's "guest.sandbox").
		if b, err := os.ReadFile(filepath.Join(wantDir, sandbox.AgentLogName)); err != nil || !strings.Contains(string(b), " sandbox="+pc.ID) {
			t.Errorf("agent.log in the pod's directory (%v) has no line of sandbox %s:\n%s", err, pc.ID, b)
		}

		stop()
		for name, p := range procs {
			if e2e.Alive(p.PID) {
				t.Errorf("%s %d alive after stop", name, p.PID)
			}
		}
		for _, d := range []string{warmDir, wantDir} {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s after stop: %v", d, err)
			}
		}
		if dirs := cgroupDirs(pc.Cgroup.Path); len(dirs) > 0 {
			t.Errorf("the pod cgroup is left: %v", dirs)
		}
	})

	t.Run("fails midway", func(t *testing.T) {
		c := testConfig(t)
		c.Agent.Transport = "serial"
		c.Hypervisor.QEMU.Machine = qemu.MachineQ35
		ctx := withTimeout(t, 3*time.Minute)
		sb, wc, stop := startWarm(t, ctx, c)
		procs := sb.HostProcesses()
		// A cgroup path the host refuses: the adoption fails after the
		// state directory moved, before anything joined the pod's cgroup.
		pc := adoptConfig(t, c, "midway-pod")
		pc.Cgroup.Path = "/" + c.Runtime.CgroupParent + "/../escape"
		err := sb.Adopt(ctx, pc)
		if err == nil || errors.Is(err, sandbox.ErrNotAdoptable) || !strings.Contains(err.Error(), "move to pod cgroup") {
			t.Fatalf("adopting with a refused cgroup path: got %v, want a failure at the cgroup move", err)
		}
		t.Logf("failed: %v", err)
		if dir := sandbox.StateDir(c.Runtime.StateDir, pc.ID); sb.StateDir() != dir {
			t.Errorf("state directory %s, want the pod's %s", sb.StateDir(), dir)
		}
		if !inCgroup(t, wc.Cgroup.Path, procs["vmm"].PID) {
			t.Error("qemu left the warm cgroup")
		}
		stop()
		for name, p := range procs {
			if e2e.Alive(p.PID) {
				t.Errorf("%s %d alive after stop", name, p.PID)
			}
		}
		if dirs := cgroupDirs(wc.Cgroup.Path); len(dirs) > 0 {
			t.Errorf("the warm cgroup is left: %v", dirs)
		}
		// testConfig's checks: nothing left in the state root.
	})

	// Each case spoils the adoption its own way, and names the field the
	// refusal must give.
	refusals := []struct {
		name  string
		spoil func(t *testing.T, procs map[string]child.Process, pc *sandbox.Config)
		field string
	}{
		{"not adoptable", func(_ *testing.T, _ map[string]child.Process, pc *sandbox.Config) {
			pc.VM.KernelParams = append(pc.VM.KernelParams, "hull.test=1")
		}, "vm.kernel_params"},
		{"virtiofsd exited", func(t *testing.T, procs map[string]child.Process, _ *sandbox.Config) {
			pid := procs["virtiofsd"].PID
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("killing virtiofsd %d: %v", pid, err)
			}
			for deadline := time.Now().Add(10 * time.Second); e2e.Alive(pid) && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
		}, "virtiofs"},
	}
	for _, rc := range refusals {
		t.Run(rc.name, func(t *testing.T) { refuseAdoption(t, rc.spoil, rc.field) })
	}
}

// refuseAdoption boots a warm sandbox, spoils its adoption with spoil, and
// checks that Adopt refuses it naming field, and that Stop then leaves
// nothing.
func refuseAdoption(t *testing.T, spoil func(*testing.T, map[string]child.Process, *sandbox.Config), field string) {
	c := testConfig(t)
	c.Agent.Transport = "serial"
	c.Hypervisor.QEMU.Machine = qemu.MachineQ35
	ctx := withTimeout(t, 3*time.Minute)
	sb, wc, stop := startWarm(t, ctx, c)
	warmDir, procs := sb.StateDir(), sb.HostProcesses()
	pc := adoptConfig(t, c, "refused-pod")
	spoil(t, procs, &pc)
	err := sb.Adopt(ctx, pc)
	var na *sandbox.NotAdoptableError
	if !errors.Is(err, sandbox.ErrNotAdoptable) || !errors.As(err, &na) || na.Field != field {
		t.Fatalf("adopting: got %v, want %s not adoptable", err, field)
	}
	t.Logf("refused: %v", err)
	if sb.StateDir() != warmDir {
		t.Errorf("a refused adoption moved the state directory to %s", sb.StateDir())
	}
	stop()
	for name, p := range procs {
		if e2e.Alive(p.PID) {
			t.Errorf("%s %d alive after stop", name, p.PID)
		}
	}
	if _, err := os.Stat(warmDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after stop: %v", warmDir, err)
	}
	for _, p := range []string{wc.Cgroup.Path, pc.Cgroup.Path} {
		if dirs := cgroupDirs(p); len(dirs) > 0 {
			t.Errorf("cgroup left: %v", dirs)
		}
	}
}

// readStartCounts reads the node's start counts under stateRoot.
func readStartCounts(t *testing.T, stateRoot string) startcount.Counts {
	t.Helper()
	c, err := startcount.Read(startcount.Path(stateRoot))
	if err != nil {
		t.Fatalf("reading the start counts: %v", err)
	}
	return c
}
