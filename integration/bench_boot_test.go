package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/procfs"
)

// BenchmarkBoot measures, per guest kernel and machine type, QEMU start to
// the agent's first answer against the floor: the same kernel and QEMU
// options booting a trivial init that writes a console line. Runs alternate
// between the two so that drift in the machine's load hits both. It also
// reports the host memory of an idle VM (QEMU's RSS and PSS once the agent
// has loaded everything). Run with -benchtime Nx for N pairs (make bench
// uses 5).
//
// The kernels: "debian", the image built from Debian's kernel package
// (HULL_ASSETS_DIR, virtio as modules the agent loads), and "hull", the
// image built with the hull kernel (HULL_TEST_ASSETS_HULLKERNEL, virtio built
// in; `make image-hullkernel`).
//
// Besides the wall times it reports the CPU time QEMU used up to the same
// points (user and system, all threads). Under TCG that is the guest's work
// plus translation; it moves much less than the wall time when other
// processes compete for the host's cores (on a loaded 2-core machine about
// ±15% against ±50% and more), so it tells a real change from noise with
// fewer runs.
func BenchmarkBoot(b *testing.B) {
	hullAssets, _ := hullKernelAssets(b)
	for _, kernel := range []struct{ name, assets string }{{"debian", env.assetsDir}, {"hull", hullAssets}} {
		for _, machine := range []string{"q35", "microvm"} {
			b.Run(kernel.name+"/"+machine, func(b *testing.B) {
				benchBoot(b, kernel.assets, machine)
			})
		}
	}
}

func benchBoot(b *testing.B, assets, machine string) {
	var floors, agents []bootSample
	var rss, pss uint64
	floorInitrd := customInitrd(b, env.floorInit)
	for i := 0; b.Loop(); i++ {
		floors = append(floors, bootFloor(b, assets, machine, floorInitrd, i))
		// The memory of the first run's idle VM is measured.
		a, r, p := bootAgent(b, assets, machine, i, i == 0)
		agents = append(agents, a)
		if r > 0 {
			rss, pss = r, p
		}
	}
	med := func(s []bootSample, f func(bootSample) time.Duration) time.Duration {
		d := make([]time.Duration, len(s))
		for i := range s {
			d[i] = f(s[i])
		}
		return medianDuration(d)
	}
	wall := func(s bootSample) time.Duration { return s.wall }
	cpu := func(s bootSample) time.Duration { return s.cpu }
	fm, am := med(floors, wall), med(agents, wall)
	b.ReportMetric(float64(fm.Milliseconds()), "floor-ms")
	b.ReportMetric(float64(am.Milliseconds()), "agent-ms")
	b.ReportMetric(float64(am)/float64(fm), "agent/floor")
	fc, ac := med(floors, cpu), med(agents, cpu)
	b.ReportMetric(float64(fc.Milliseconds()), "floor-cpu-ms")
	b.ReportMetric(float64(ac.Milliseconds()), "agent-cpu-ms")
	if fc > 0 {
		b.ReportMetric(float64(ac)/float64(fc), "agent/floor-cpu")
	}
	// The guest clock splits the agent's extra time: up to its main (the
	// larger initramfs to unpack, the Go runtime and package inits) and
	// from main to its first answer.
	b.ReportMetric(float64(med(floors, func(s bootSample) time.Duration { return s.guestMain }).Milliseconds()), "floor-guest-main-ms")
	b.ReportMetric(float64(med(agents, func(s bootSample) time.Duration { return s.guestMain }).Milliseconds()), "agent-guest-main-ms")
	b.ReportMetric(float64(med(agents, func(s bootSample) time.Duration { return s.guestAnswer - s.guestMain }).Milliseconds()), "agent-main-to-answer-ms")
	if rss > 0 {
		b.ReportMetric(float64(rss)/1024, "idle-rss-MiB")
		b.ReportMetric(float64(pss)/1024, "idle-pss-MiB")
	}
	b.Logf("floor %v, agent %v", floors, agents)
}

// bootSample is one boot: the wall and QEMU CPU time from QEMU's start to
// the marker (floor) or first answer (agent), and guest clock readings:
// when init's main began and, for the agent, when it first answered.
type bootSample struct {
	wall, cpu, guestMain, guestAnswer time.Duration
}

func (s bootSample) String() string {
	return fmt.Sprintf("%v (cpu %v, guest main %v)", s.wall.Round(time.Millisecond), s.cpu.Round(10*time.Millisecond), s.guestMain.Round(time.Millisecond))
}

// startBenchVM starts a VM of the image in assets on machine, with initrd
// in place of the image's when it is set, and returns it with the time it
// was started. The VM is stopped when the benchmark ends.
func startBenchVM(b *testing.B, name, assets, machine, initrd string, params []string) (*qemu.VM, time.Time) {
	c := testConfig(b)
	c.Image.AssetsDir = assets
	kernel, imageInitrd, err := launch.Assets(c, false)
	if err != nil {
		b.Fatal(err)
	}
	if initrd == "" {
		initrd = imageInitrd
	}
	dir := filepath.Join(c.Runtime.StateDir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	o := launch.QEMUOptions(c)
	o.Machine = machine
	vm, err := qemu.New(hypervisor.Config{
		ID: name, StateDir: dir, Kernel: kernel, Initrd: initrd,
		VCPUs: c.Hypervisor.VCPUs, MemoryMiB: c.Hypervisor.MemoryMiB,
		Agent:        hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName},
		KernelParams: params,
	}, o)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if err := vm.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = vm.Stop(context.Background()) })
	return vm, start
}

// bootFloor boots the floor's trivial init up to its marker.
func bootFloor(b *testing.B, assets, machine, initrd string, i int) bootSample {
	vm, start := startBenchVM(b, fmt.Sprintf("floor-%s-%d", machine, i), assets, machine, initrd, nil)
	defer func() { _ = vm.Stop(context.Background()) }()
	deadline := time.After(time.Minute)
	pid := vm.Describe().PID
	const marker = "hull-floor: init running at "
	for {
		// Sampled before the console: the floor powers off right after its
		// line, and QEMU may be gone by the time the line is seen.
		cpu := processCPU(pid)
		for _, l := range vm.ConsoleTail(5) {
			_, at, ok := strings.Cut(l, marker)
			if !ok {
				continue
			}
			s := bootSample{wall: time.Since(start), cpu: cpu}
			if c := processCPU(pid); c > 0 {
				s.cpu = c
			}
			secs, err := strconv.ParseFloat(strings.TrimSpace(at), 64)
			if err != nil {
				b.Fatalf("floor marker %q: %v", l, err)
			}
			s.guestMain = time.Duration(secs * float64(time.Second))
			return s
		}
		select {
		case <-vm.Done():
			b.Fatalf("floor vm exited before its marker: %v", vm.ConsoleTail(10))
		case <-deadline:
			b.Fatal("floor vm: no marker within a minute")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// bootAgent boots the agent up to its first answer and with measureMemory
// returns the idle VM's RSS and PSS.
func bootAgent(b *testing.B, assets, machine string, i int, measureMemory bool) (s bootSample, rss, pss uint64) {
	ep := hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName}
	vm, start := startBenchVM(b, fmt.Sprintf("agent-%s-%d", machine, i), assets, machine, "", agentclient.KernelParams(ep, "info"))
	defer func() { _ = vm.Stop(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Dial returns with the first answer (its health check); the log
	// stream, which production opens next, is left out of the measure.
	c, err := agentclient.Dial(ctx, vm.Agent(), agentclient.Options{DialTimeout: time.Minute, CallTimeout: 10 * time.Second, Abort: vm.Done(), NoLogStream: true})
	if err != nil {
		b.Fatal(err)
	}
	s.wall = time.Since(start)
	s.cpu = processCPU(vm.Describe().PID)
	defer func() { _ = c.Close() }()
	d, err := c.System().GuestDetails(ctx, &api.GuestDetailsRequest{})
	if err != nil {
		b.Fatal(err)
	}
	s.guestMain, s.guestAnswer = d.GetAgentStart().AsDuration(), d.GetFirstAnswer().AsDuration()
	if !measureMemory {
		return s, 0, 0
	}
	// Idle: let the background module loads finish and the guest settle.
	time.Sleep(5 * time.Second)
	rss, pss = e2e.SmapsRollup(vm.Describe().PID)
	return s, rss, pss
}

// processCPU returns the user and system CPU time a process used so far, all
// threads, from /proc/<pid>/stat (in clock ticks, USER_HZ=100 on x86); 0
// when it cannot be read.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// After the command name: state is f[0], utime f[11], stime f[12].
	f, err := procfs.StatFields(b)
	if err != nil || len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// BenchmarkAgentStart runs the agent binary on the host, outside any VM
// (`hull-agent --listen unix:...`, the same code serving the same protocol
// over yamux), from exec to its first answer. On the host's own CPU it shows
// what the agent's start costs without TCG translating every piece of code
// the first time it runs: about what it would add to a boot under KVM, which
// this machine cannot measure. Not PID 1, so the guest's mounts are left out.
func BenchmarkAgentStart(b *testing.B) {
	bin := filepath.Join(env.binDir, "hull-agent")
	var toMain, toAnswer, total []time.Duration
	for i := 0; b.Loop(); i++ {
		sock := filepath.Join(b.TempDir(), "agent.sock")
		cmd := exec.Command(bin, "--listen", "unix:"+sock, "--log-level", "warn")
		var stderr e2e.SyncBuffer
		cmd.Stderr = &stderr
		before := bootClock(b)
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := agentclient.Dial(ctx, hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: sock},
			agentclient.Options{DialTimeout: 30 * time.Second, NoLogStream: true})
		if err != nil {
			cancel()
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			b.Fatalf("%v; agent's log: %s", err, stderr.String())
		}
		total = append(total, time.Since(start))
		d, err := c.System().GuestDetails(ctx, &api.GuestDetailsRequest{})
		_ = c.Close()
		cancel()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if werr := cmd.Wait(); err == nil && werr != nil {
			err = fmt.Errorf("agent exit: %w", werr)
		}
		if err != nil {
			b.Fatalf("%v; agent's log: %s", err, stderr.String())
		}
		// The agent reads the same clock (CLOCK_BOOTTIME) as bootClock.
		toMain = append(toMain, d.GetAgentStart().AsDuration()-before)
		toAnswer = append(toAnswer, d.GetFirstAnswer().AsDuration()-d.GetAgentStart().AsDuration())
	}
	b.ReportMetric(float64(medianDuration(total).Microseconds())/1000, "exec-to-answer-ms")
	b.ReportMetric(float64(medianDuration(toMain).Microseconds())/1000, "exec-to-main-ms")
	b.ReportMetric(float64(medianDuration(toAnswer).Microseconds())/1000, "main-to-answer-ms")
}

// bootClock reads the host's CLOCK_BOOTTIME.
func bootClock(b *testing.B) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}
