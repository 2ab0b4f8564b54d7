package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// hogsPerCPU is how many busy loops per host CPU TestHostCPUPressure runs.
const hogsPerCPU = 2

// stretchedMsg is the message the start logs when the load stretches its
// dial timeout.
const stretchedMsg = "host under load: dial timeout stretched"

// TestHostCPUPressure starts a sandbox with the default agent timeouts
// while busy loops (hogsPerCPU per CPU, in a cgroup of their own that the
// test empties and removes) keep every host CPU busy. The start either
// succeeds or fails with an error naming its dial timeout; either way it
// ends within the documented bound (dial_timeout x dial_timeout_max_scale,
// then the calls that follow), the dial timeout it used is the one
// docs/reliability.md gives for the host's load while it booted
// (dial_timeout x min(max(L, 1), dial_timeout_max_scale), L the 1-minute
// load average per CPU), and nothing is left (testConfig's leak check).
func TestHostCPUPressure(t *testing.T) {
	c := testConfig(t)
	c.Image.AssetsDir, _ = hullKernelAssets(t)
	c.Agent.Transport = "serial"
	def := config.Defaults()
	c.Agent.DialTimeout, c.Agent.CallTimeout, c.Agent.DialTimeoutMaxScale = def.Agent.DialTimeout, def.Agent.CallTimeout, def.Agent.DialTimeoutMaxScale
	dial, maxScale := c.Agent.DialTimeout.Duration, float64(c.Agent.DialTimeoutMaxScale)
	bound := time.Duration(float64(dial)*maxScale) + 3*c.Agent.CallTimeout.Duration + 30*time.Second

	stopHogs := startHogs(t, hogsPerCPU*runtime.NumCPU())
	defer stopHogs()
	// Loads seen while the start runs: the one its dial read lies within.
	loads := sampleLoad()
	sc, err := launch.SandboxConfig(c, "cpu-pressure")
	if err != nil {
		t.Fatal(err)
	}
	var logs e2e.SyncBuffer
	logger := logrus.New()
	logger.SetOutput(&logs)
	logger.SetFormatter(&logrus.JSONFormatter{})
	ctx := log.WithLogger(withTimeout(t, bound+time.Minute), logrus.NewEntry(logger))
	start := time.Now()
	sb, err := sandbox.Start(ctx, sc)
	took := time.Since(start)
	lo, hi := loads()
	stopHogs()
	used := dialTimeoutUsed(t, logs.Bytes(), dial)
	t.Logf("start under %d busy loops: %s, error %v; dial timeout %s (load per CPU %.2f..%.2f while it ran)",
		hogsPerCPU*runtime.NumCPU(), took.Round(time.Millisecond), err, used, lo, hi)
	if err == nil {
		if stopErr := sb.Stop(withTimeout(t, time.Minute)); stopErr != nil {
			t.Error(stopErr)
		}
	} else if want := fmt.Sprintf("did not answer within %s", used); !strings.Contains(err.Error(), want) {
		t.Errorf("the start failed without saying its dial timeout (%q): %v", want, err)
	}
	if took > bound {
		t.Errorf("the start took %s, more than its bound %s", took, bound)
	}
	// 5% room for the load's rounding.
	low, high := scaledDial(dial, maxScale, lo), scaledDial(dial, maxScale, hi)
	if float64(used) < 0.95*float64(low) || float64(used) > 1.05*float64(high) {
		t.Errorf("dial timeout %s; for a load per CPU of %.2f..%.2f docs/reliability.md gives %s..%s", used, lo, hi, low, high)
	}
}

// scaledDial is the documented dial timeout at load per CPU l.
func scaledDial(d time.Duration, maxScale, l float64) time.Duration {
	return time.Duration(float64(d) * min(max(l, 1), maxScale))
}

// dialTimeoutUsed is the dial timeout the start logged it stretched to, or
// d when it logged none.
func dialTimeoutUsed(t *testing.T, logs []byte, d time.Duration) time.Duration {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(logs))
	for sc.Scan() {
		var e struct {
			Msg         string  `json:"msg"`
			DialTimeout float64 `json:"dial_timeout"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == stretchedMsg {
			return time.Duration(e.DialTimeout)
		}
	}
	return d
}

// sampleLoad reads the 1-minute load average per CPU every second until
// the returned function is called, which returns the lowest and highest.
func sampleLoad() func() (lo, hi float64) {
	var mu sync.Mutex
	lo, hi := loadPerCPU(), loadPerCPU()
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
			l := loadPerCPU()
			mu.Lock()
			lo, hi = min(lo, l), max(hi, l)
			mu.Unlock()
		}
	}()
	return func() (float64, float64) {
		close(done)
		<-ended
		l := loadPerCPU()
		mu.Lock()
		defer mu.Unlock()
		return min(lo, l), max(hi, l)
	}
}

func loadPerCPU() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	l, _ := strconv.ParseFloat(f[0], 64)
	return l / float64(runtime.NumCPU())
}

// startHogs starts n busy loops in a cpu cgroup of their own and returns
// the function that kills every process of that cgroup and removes it
// (idempotent; the test calls it at the latest on its way out).
func startHogs(t *testing.T, n int) func() {
	t.Helper()
	cg := filepath.Join(cpuCgroupRoot(t), fmt.Sprintf("hull-it-hog-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			for range 50 {
				pids := cgroupProcs(cg)
				if len(pids) == 0 {
					break
				}
				for _, pid := range pids {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err := os.Remove(cg); err != nil {
				t.Errorf("removing the hogs' cgroup: %v", err)
			}
		})
	}
	for range n {
		cmd := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec sh -c 'while :; do :; done'`, "hog", cg)
		if err := cmd.Start(); err != nil {
			stop()
			t.Fatal(err)
		}
		go func() { _ = cmd.Wait() }() // reaped when the cgroup is emptied
	}
	// Every loop is in the cgroup before the start begins.
	deadline := time.Now().Add(10 * time.Second)
	for len(cgroupProcs(cg)) < n {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("%d of %d busy loops in %s", len(cgroupProcs(cg)), n, cg)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return stop
}

// cpuCgroupRoot is the host's cpu controller: the cgroup v1 hierarchy, or
// the unified one on a cgroup v2 host.
func cpuCgroupRoot(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/sys/fs/cgroup/cpu", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
			return p
		}
	}
	t.Fatal("no cpu cgroup hierarchy under /sys/fs/cgroup")
	return ""
}

// cgroupProcs lists the processes in cgroup dir.
func cgroupProcs(dir string) []int {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
