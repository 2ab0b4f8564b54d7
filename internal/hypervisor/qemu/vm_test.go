package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// newTestVM returns an unstarted TCG VM that boots the test initrd.
func newTestVM(t *testing.T, machine string, params ...string) *VM {
	t.Helper()
	return newTestVMWith(t, machine, nil, params...)
}

// newTestVMWith is newTestVM with edit applied to the VM's config.
func newTestVMWith(t *testing.T, machine string, edit func(*hypervisor.Config), params ...string) *VM {
	t.Helper()
	kernel := requireQEMU(t)
	id := fmt.Sprintf("hull-test-%s-%d", strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"), time.Now().UnixNano()%100000)
	cfg := hypervisor.Config{
		ID:           id,
		StateDir:     t.TempDir(),
		Kernel:       kernel,
		Initrd:       testInitrd(t),
		KernelParams: params,
		VCPUs:        1,
		MemoryMiB:    256,
		Agent:        hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial},
		Debug:        os.Getenv("HULL_TEST_DEBUG") != "",
	}
	if edit != nil {
		edit(&cfg)
	}
	// HULL_TEST_CPU overrides the CPU model, for measurements.
	v, err := New(cfg, Options{Machine: machine, Accel: AccelTCG, CgroupParent: testCgroupParent, CPUModel: os.Getenv("HULL_TEST_CPU")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := v.Stop(ctx); err != nil {
			t.Errorf("cleanup stop: %v", err)
		}
		assertNoQEMU(t, id)
	})
	return v
}

// waitConsole waits until a console line contains want.
func waitConsole(t *testing.T, v *VM, want string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		for _, l := range v.ConsoleTail(200) {
			if strings.Contains(l, want) {
				return time.Since(start)
			}
		}
		select {
		case <-v.Done():
			t.Fatalf("vm exited before %q on the console:\n%s", want, strings.Join(v.ConsoleTail(30), "\n"))
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no %q on the console within %s:\n%s", want, limit, strings.Join(v.ConsoleTail(30), "\n"))
	return 0
}

func cgroupDirs(path string) []string {
	var dirs []string
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/pids"} {
		d := filepath.Join(root, path)
		if _, err := os.Stat(d); err == nil {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

func TestBootPauseStop(t *testing.T) {
	for _, machine := range []string{MachineQ35, MachineMicroVM} {
		t.Run(machine, func(t *testing.T) {
			v := newTestVM(t, machine)
			ctx := context.Background()
			start := time.Now()
			if err := v.Start(ctx); err != nil {
				t.Fatal(err)
			}
			d := v.Describe()
			t.Logf("started in %s: pid %d, %s %s, cgroup %s, version %s", time.Since(start).Round(time.Millisecond),
				d.PID, d.Machine, d.Accel, d.Cgroup, d.Version)
			if d.PID == 0 || d.Accel != AccelTCG || d.Machine != machine || d.Version == "" {
				t.Errorf("describe: %+v", d)
			}
			dirs := cgroupDirs(d.Cgroup)
			if len(dirs) == 0 {
				t.Errorf("no cgroup directory for %s", d.Cgroup)
			}
			for _, dir := range dirs {
				b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
				if err != nil || !strings.Contains(string(b), fmt.Sprint(d.PID)) {
					t.Errorf("pid %d not in %s: %q %v", d.PID, dir, b, err)
				}
			}
			took := waitConsole(t, v, testMarker, 60*time.Second)
			t.Logf("BOOT %s: marker %s after Start returned, %s after Start was called",
				machine, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

			if os.Getenv("HULL_TEST_IDLE") != "" {
				t.Logf("IDLE %s: qemu uses %.1f%% CPU with the guest idle", machine, cpuPercent(t, d.PID, 3*time.Second))
			}

			p, err := hypervisor.AsPauser(v)
			if err != nil {
				t.Fatal(err)
			}
			for _, step := range []struct {
				name string
				f    func(context.Context) error
				want string
			}{
				{"pause", p.Pause, "paused"},
				{"pause again", p.Pause, "paused"},
				{"resume", p.Resume, "running"},
			} {
				if err := step.f(ctx); err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				if got := queryStatus(t, v); got != step.want {
					t.Errorf("%s: status %q, want %q", step.name, got, step.want)
				}
			}

			stopStart := time.Now()
			if err := v.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("stopped in %s", time.Since(stopStart).Round(time.Millisecond))
			if err := v.Stop(ctx); err != nil {
				t.Errorf("second stop: %v", err)
			}
			exit, err := v.Wait(ctx)
			if err != nil || !exit.Requested {
				t.Errorf("wait: %+v %v", exit, err)
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", d.PID)); err == nil {
				t.Errorf("pid %d still exists", d.PID)
			}
			if dirs := cgroupDirs(d.Cgroup); len(dirs) > 0 {
				t.Errorf("cgroup left: %v", dirs)
			}
			for _, f := range []string{qmpSocketName, pidFileName, "agent.sock"} {
				if _, err := os.Stat(filepath.Join(v.cfg.StateDir, f)); err == nil {
					t.Errorf("%s left in the state dir", f)
				}
			}
			if err := p.Pause(ctx); !hypervisor.IsExited(err) {
				t.Errorf("pause after stop: %v", err)
			}
		})
	}
}

func queryStatus(t *testing.T, v *VM) string {
	t.Helper()
	v.mu.Lock()
	q := v.qmp
	v.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var st struct {
		Status string `json:"status"`
	}
	r, err := q.execute(ctx, "query-status", nil)
	if err == nil {
		err = json.Unmarshal(r, &st)
	}
	if err != nil {
		t.Fatalf("query-status: %v", err)
	}
	return st.Status
}

func TestGuestPanic(t *testing.T) {
	for _, machine := range []string{MachineQ35, MachineMicroVM} {
		t.Run(machine, func(t *testing.T) {
			v := newTestVM(t, machine, "rdinit=/nonexistent", "init=/nonexistent")
			if err := v.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			select {
			case <-v.Done():
			case <-time.After(60 * time.Second):
				t.Fatalf("vm did not exit after a guest panic:\n%s", strings.Join(v.ConsoleTail(20), "\n"))
			}
			exit, err := v.Wait(context.Background())
			if err != nil || exit.Requested {
				t.Errorf("wait: %+v %v", exit, err)
			}
			tail := strings.Join(v.ConsoleTail(30), "\n")
			if !strings.Contains(tail, "Kernel panic") {
				t.Errorf("no panic line in the console tail:\n%s", tail)
			}
			t.Logf("exit %s; last line: %s", exit, v.ConsoleTail(1))
		})
	}
}

func TestGuestPowerOff(t *testing.T) {
	v := newTestVM(t, MachineMicroVM, "hulltest=poweroff")
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("vm did not exit after poweroff:\n%s", strings.Join(v.ConsoleTail(20), "\n"))
	}
	exit, _ := v.Wait(context.Background())
	if exit.Code != 0 || !exit.Requested {
		t.Errorf("exit %+v, want a requested exit 0", exit)
	}
}

func TestStartFailure(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*VM)
		want   string
	}{
		{"qemu rejects an option", func(v *VM) { v.layout.cpuModel = "no-such-cpu" }, "no-such-cpu"},
		{"missing kernel", func(v *VM) { v.cfg.Kernel = "/nonexistent/vmlinuz" }, "/nonexistent/vmlinuz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestVM(t, MachineQ35)
			tc.modify(v)
			err := v.Start(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
			t.Logf("error: %v", err)
			if strings.Contains(err.Error(), "waiting for connection") {
				t.Errorf("error quotes QEMU's console-connection notice: %v", err)
			}
			if dirs := cgroupDirs(v.cgroupPath()); len(dirs) > 0 {
				t.Errorf("cgroup left: %v", dirs)
			}
			entries, _ := os.ReadDir(v.cfg.StateDir)
			for _, e := range entries {
				if e.Name() != consoleLogName {
					t.Errorf("%s left in the state dir", e.Name())
				}
			}
			assertNoQEMU(t, v.cfg.ID)
			if err := v.Start(context.Background()); err == nil {
				t.Error("second start succeeded")
			}
			if _, err := v.Wait(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
				t.Logf("wait: %v", err)
			}
		})
	}
}

// cpuPercent samples a process's CPU use (user+system) over d.
func cpuPercent(t *testing.T, pid int, d time.Duration) float64 {
	ticks := func() float64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		u, err := strconv.ParseFloat(f[11], 64)
		if err != nil {
			t.Fatal(err)
		}
		s, err := strconv.ParseFloat(f[12], 64)
		if err != nil {
			t.Fatal(err)
		}
		return u + s
	}
	before := ticks()
	time.Sleep(d)
	return (ticks() - before) / 100 / d.Seconds() * 100
}

func TestStopKillsUnresponsiveQEMU(t *testing.T) {
	v := newTestVM(t, MachineMicroVM)
	v.opts.StopTimeout = 300 * time.Millisecond
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	pid := v.Describe().PID
	// A stopped process answers no QMP; only SIGKILL ends it.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := v.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	exit, _ := v.Wait(context.Background())
	if exit.Signal != "SIGKILL" || !exit.Requested {
		t.Errorf("exit %+v, want a requested SIGKILL", exit)
	}
	if took > 3*time.Second {
		t.Errorf("stop took %s with a 300ms stop timeout", took)
	}
	if dirs := cgroupDirs(v.cgroupPath()); len(dirs) > 0 {
		t.Errorf("cgroup left: %v", dirs)
	}
}

// TestConsoleBounded boots a guest that writes to its serial console
// without end and checks that the console log and its rotated part stay
// within the bound while ConsoleTail keeps returning the newest lines,
// during the flood and after Stop.
func TestConsoleBounded(t *testing.T) {
	const bound = 32 << 10
	v := newTestVM(t, MachineMicroVM, "hulltest=flood")
	v.opts.ConsoleMax = bound
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(v.cfg.StateDir, consoleLogName)
	rotated := log + ".1"
	lastLine := func() int {
		tail := v.ConsoleTail(1)
		if len(tail) != 1 {
			return -1
		}
		n, err := strconv.Atoi(strings.TrimPrefix(tail[0], "flood line "))
		if err != nil {
			return -1
		}
		return n
	}
	deadline := time.Now().Add(3 * time.Minute)
	rotations, last := 0, -1
	var prevRotatedIno uint64
	for rotations < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d rotations within 3 minutes; console:\n%s", rotations, strings.Join(v.ConsoleTail(10), "\n"))
		}
		for _, f := range []string{log, rotated} {
			if st, err := os.Stat(f); err == nil && st.Size() > bound {
				t.Fatalf("%s has %d bytes, bound %d", f, st.Size(), bound)
			}
		}
		if st, err := os.Stat(rotated); err == nil {
			if ino := st.Sys().(*syscall.Stat_t).Ino; ino != prevRotatedIno {
				rotations, prevRotatedIno = rotations+1, ino
			}
		}
		if n := lastLine(); n > last {
			last = n
		}
		select {
		case <-v.Done():
			t.Fatalf("vm exited during the flood:\n%s", strings.Join(v.ConsoleTail(10), "\n"))
		case <-time.After(50 * time.Millisecond):
		}
	}
	if last < 0 {
		t.Fatalf("ConsoleTail never returned a flood line: %q", v.ConsoleTail(3))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// QEMU may have been stopped in the middle of a line ("flood line 6"
	// of 6012): the newest whole line is one of the last two.
	n := -1
	for _, l := range v.ConsoleTail(2) {
		if k, err := strconv.Atoi(strings.TrimPrefix(l, "flood line ")); err == nil && k > n {
			n = k
		}
	}
	if n < last {
		t.Fatalf("after stop the newest console line is %d (%q), before it was %d", n, v.ConsoleTail(2), last)
	}
	var total int64
	for _, f := range []string{log, rotated} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	t.Logf("%d rotations; last line %d; %d bytes kept", rotations, n, total)
	if total > 2*bound {
		t.Fatalf("%d bytes kept, bound 2*%d", total, bound)
	}
}

// TestRestoreFailureBootable: a clone whose template state QEMU refuses
// fails to start with hypervisor.ErrRestoreFailed (its caller may boot a
// VM of the same companions instead), and by then its QEMU is gone, with
// its copy of the template memory and its cgroup.
func TestRestoreFailureBootable(t *testing.T) {
	kernel := requireQEMU(t)
	tdir := filepath.Join(t.TempDir(), "k1")
	if err := os.Mkdir(tdir, 0o700); err != nil {
		t.Fatal(err)
	}
	const memMiB = 128
	if err := os.WriteFile(filepath.Join(tdir, templateMemoryName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(tdir, templateMemoryName), memMiB<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tdir, templateStateName), []byte("not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("hull-test-restorefail-%d", time.Now().UnixNano()%100000)
	cfg := hypervisor.Config{
		ID:        id,
		StateDir:  t.TempDir(),
		Kernel:    kernel,
		Initrd:    testInitrd(t),
		VCPUs:     1,
		MemoryMiB: memMiB,
		Agent:     hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial},
		Template:  &hypervisor.Template{Dir: tdir, Restore: true, Memory: hypervisor.TemplateMemoryPrivate},
	}
	v, err := New(cfg, Options{Machine: MachineQ35, Accel: AccelTCG, CgroupParent: testCgroupParent})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = v.Start(ctx)
	if err == nil {
		_ = v.Stop(ctx)
		t.Fatal("a clone of a damaged template started")
	}
	t.Logf("error: %v", err)
	if !errors.Is(err, hypervisor.ErrRestoreFailed) {
		t.Errorf("start: %v, want ErrRestoreFailed", err)
	}
	assertNoQEMU(t, id)
	if dirs := cgroupDirs(v.cgroupPath()); len(dirs) > 0 {
		t.Errorf("cgroup left: %v", dirs)
	}
	entries, _ := os.ReadDir(cfg.StateDir)
	for _, e := range entries {
		if e.Name() != consoleLogName {
			t.Errorf("%s left in the state dir", e.Name())
		}
	}
}

func TestQEMUEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want []string
	}{
		{"adds the malloc settings", []string{"PATH=/bin"}, []string{"PATH=/bin", "GLIBC_TUNABLES=" + mallocTunables, "G_SLICE=always-malloc"}},
		{"adds to the operator's tunables", []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2", "PATH=/bin"}, []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2:" + mallocTunables, "PATH=/bin", "G_SLICE=always-malloc"}},
		{"keeps the operator's threshold", []string{"PATH=/bin", "GLIBC_TUNABLES=glibc.malloc.trim_threshold=4096"}, []string{"PATH=/bin", "GLIBC_TUNABLES=glibc.malloc.trim_threshold=4096", "G_SLICE=always-malloc"}},
		{"fills an empty one", []string{"GLIBC_TUNABLES="}, []string{"GLIBC_TUNABLES=" + mallocTunables, "G_SLICE=always-malloc"}},
		{"keeps the operator's G_SLICE", []string{"G_SLICE=debug-blocks", "PATH=/bin"}, []string{"G_SLICE=debug-blocks", "PATH=/bin", "GLIBC_TUNABLES=" + mallocTunables}},
		{"keeps an empty G_SLICE", []string{"G_SLICE="}, []string{"G_SLICE=", "GLIBC_TUNABLES=" + mallocTunables}},
		{"adds to the last of two tunables, which exec passes", []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2", "GLIBC_TUNABLES=glibc.malloc.arena_max=4"},
			[]string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2", "GLIBC_TUNABLES=glibc.malloc.arena_max=4:" + mallocTunables, "G_SLICE=always-malloc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.env)
			if got := qemuEnv(tc.env); !slices.Equal(got, tc.want) {
				t.Errorf("qemuEnv(%q) = %q, want %q", tc.env, got, tc.want)
			}
			if !slices.Equal(in, tc.env) {
				t.Errorf("qemuEnv changed its argument: %q", tc.env)
			}
		})
	}
}

// TestFirmwarePath checks that qboot's image is found by its absolute path
// in the data directory beside the program, before the distributions'
// directories, and that a missing image is a not-found error that names
// the way out.
func TestFirmwarePath(t *testing.T) {
	saved := firmwareDirs
	firmwareDirs = []string{t.TempDir()} // the host's own left out
	t.Cleanup(func() { firmwareDirs = saved })
	prefix := t.TempDir()
	bin := filepath.Join(prefix, "bin", "qemu-system-x86_64")
	rom := filepath.Join(prefix, "share", "qemu", qbootFile)
	for _, d := range []string{filepath.Dir(bin), filepath.Dir(rom)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := firmwarePath(bin, qbootFile); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "qemu-system-data") || !strings.Contains(err.Error(), FirmwareSeaBIOS) {
		t.Errorf("no image: err %v, want not found naming the package and %q", err, FirmwareSeaBIOS)
	}
	if err := os.WriteFile(rom, []byte("rom"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := firmwarePath(bin, qbootFile); err != nil || got != rom {
		t.Errorf("firmwarePath = %q, %v; want %q", got, err, rom)
	}
}
