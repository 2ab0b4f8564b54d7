package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
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
	var agentTimes, floorTimes, agentCPU, floorCPU []time.Duration
	var rss, pss uint64
	floorInitrd := customInitrd(b, env.floorInit)
	for i := 0; b.Loop(); i++ {
		ft, fc := bootFloor(b, assets, machine, floorInitrd, i)
		floorTimes, floorCPU = append(floorTimes, ft), append(floorCPU, fc)
		// The memory of the first run's idle VM is measured.
		at, ac, r, p := bootAgent(b, assets, machine, i, i == 0)
		agentTimes, agentCPU = append(agentTimes, at), append(agentCPU, ac)
		if r > 0 {
			rss, pss = r, p
		}
	}
	fm, am := medianDuration(floorTimes), medianDuration(agentTimes)
	b.ReportMetric(float64(fm.Milliseconds()), "floor-ms")
	b.ReportMetric(float64(am.Milliseconds()), "agent-ms")
	b.ReportMetric(float64(am)/float64(fm), "agent/floor")
	fc, ac := medianDuration(floorCPU), medianDuration(agentCPU)
	b.ReportMetric(float64(fc.Milliseconds()), "floor-cpu-ms")
	b.ReportMetric(float64(ac.Milliseconds()), "agent-cpu-ms")
	if fc > 0 {
		b.ReportMetric(float64(ac)/float64(fc), "agent/floor-cpu")
	}
	if rss > 0 {
		b.ReportMetric(float64(rss)/1024, "idle-rss-MiB")
		b.ReportMetric(float64(pss)/1024, "idle-pss-MiB")
	}
	b.Logf("floor %v (cpu %v), agent %v (cpu %v)", floorTimes, floorCPU, agentTimes, agentCPU)
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

// bootFloor returns the wall and QEMU CPU time to the floor's marker.
func bootFloor(b *testing.B, assets, machine, initrd string, i int) (time.Duration, time.Duration) {
	vm, start := startBenchVM(b, fmt.Sprintf("floor-%s-%d", machine, i), assets, machine, initrd, nil)
	defer func() { _ = vm.Stop(context.Background()) }()
	deadline := time.After(time.Minute)
	pid := vm.Describe().PID
	for {
		// Sampled before the console: the floor powers off right after its
		// line, and QEMU may be gone by the time the line is seen.
		cpu := processCPU(pid)
		for _, l := range vm.ConsoleTail(5) {
			if strings.Contains(l, "hull-floor: init running") {
				if c := processCPU(pid); c > 0 {
					cpu = c
				}
				return time.Since(start), cpu
			}
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

// bootAgent returns the wall and QEMU CPU time to the agent's first answer,
// and with measureMemory the idle VM's RSS and PSS.
func bootAgent(b *testing.B, assets, machine string, i int, measureMemory bool) (took, cpu time.Duration, rss, pss uint64) {
	ep := hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName}
	vm, start := startBenchVM(b, fmt.Sprintf("agent-%s-%d", machine, i), assets, machine, "", agentclient.KernelParams(ep, "info"))
	defer func() { _ = vm.Stop(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := agentclient.Dial(ctx, vm.Agent(), agentclient.Options{DialTimeout: time.Minute, CallTimeout: 10 * time.Second, Abort: vm.Done()})
	if err != nil {
		b.Fatal(err)
	}
	took = time.Since(start)
	cpu = processCPU(vm.Describe().PID)
	defer func() { _ = c.Close() }()
	if !measureMemory {
		return took, cpu, 0, 0
	}
	// Idle: let the background module loads finish and the guest settle.
	time.Sleep(5 * time.Second)
	rss, pss = smapsRollup(vm.Describe().PID)
	return took, cpu, rss, pss
}

// processCPU returns the user and system CPU time a process used so far, all
// threads, from /proc/<pid>/stat (in clock ticks, USER_HZ=100 on x86); 0
// when it cannot be read.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is the first, utime the 12th, stime the 13th.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// smapsRollup returns a process's Rss and Pss in KiB.
func smapsRollup(pid int) (rss, pss uint64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	defer func() { _ = f.Close() }() // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss
}
