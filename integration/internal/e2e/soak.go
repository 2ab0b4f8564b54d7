package e2e

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Soak knobs: the environment variables that size a soak, and the bounded
// form `make test` runs when they are unset.
const (
	SoakPodsEnv   = "SOAK_PODS"
	SoakRoundsEnv = "SOAK_ROUNDS"
	// SoakReportEnv names a file each soak appends its figures to, one
	// line per run (make soak).
	SoakReportEnv = "SOAK_REPORT"

	boundedSoakPods   = 4
	boundedSoakRounds = 1
	maxSoakPods       = 200
	maxSoakRounds     = 1000
)

// Soak timeouts. A burst queues at boot admission: with 2 boot slots and
// boots of 5-30 s on a loaded 2-CPU TCG host, the last of 40 pods waits
// up to 10 minutes for its slot, so a soak raises runtime.boot_wait_timeout,
// and each call's deadline covers that wait, the agent's dial timeout and
// the rest of the start.
const (
	SoakBootWait  = 20 * time.Minute
	SoakStartCall = SoakBootWait + 2*time.Minute
	SoakCall      = 2 * time.Minute
	// SoakExitWait bounds a container's exit after its exec told it to.
	SoakExitWait = time.Minute
	// SoakCleanWait is how long the leftover check waits for shims and
	// VMs to go after the last removal.
	SoakCleanWait = time.Minute
)

// SoakAssets is the guest image of a soak: the hull kernel's (faster
// boots) when HULL_TEST_ASSETS_HULLKERNEL names it, else the suite's
// image suiteAssets.
func SoakAssets(t testing.TB, suiteAssets string) string {
	if dir := os.Getenv("HULL_TEST_ASSETS_HULLKERNEL"); dir != "" {
		return dir
	}
	t.Logf("HULL_TEST_ASSETS_HULLKERNEL is not set: the soak boots the suite's image %s", suiteAssets)
	return suiteAssets
}

// SoakSize returns how many pods a soak starts at once and how many rounds
// it runs: SOAK_PODS and SOAK_ROUNDS, or the bounded form.
func SoakSize(t testing.TB) (pods, rounds int) {
	t.Helper()
	get := func(name string, def, max int) int {
		v := os.Getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > max {
			t.Fatalf("%s=%q: want 1..%d", name, v, max)
		}
		return n
	}
	return get(SoakPodsEnv, boundedSoakPods, maxSoakPods), get(SoakRoundsEnv, boundedSoakRounds, maxSoakRounds)
}

// Node-wide places where a pod leaves traces that no per-daemon check
// sees.
var (
	// shimSocketDir is where containerd's shims put their sockets.
	shimSocketDir = "/run/containerd/s"
	netnsDir      = "/run/netns"
)

// TestNetnsPrefix starts the names of the network namespaces the root
// suite's tests create as fixtures. They are not pods' traces: a soak that
// shares the node with those tests does not count them as its leftovers.
const TestNetnsPrefix = "hull-nettest-"

// ShimSocket is the socket containerd's shim library gives the shim of
// task (or pod) id in namespace ns of the containerd serving at address:
// /run/containerd/s/<sha256 of address/ns/id>.
func ShimSocket(address, ns, id string) string {
	return filepath.Join(shimSocketDir, fmt.Sprintf("%x", sha256.Sum256([]byte(filepath.Join(address, ns, id)))))
}

// HostTraces is a snapshot of node-wide traces of pods: containerd shim
// sockets, attached loop devices, tap devices and named network
// namespaces.
type HostTraces map[string]bool

// Traces takes the snapshot.
func Traces() HostTraces {
	h := HostTraces{}
	if ents, err := os.ReadDir(shimSocketDir); err == nil {
		for _, e := range ents {
			h["shim socket "+filepath.Join(shimSocketDir, e.Name())] = true
		}
	}
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), TestNetnsPrefix) {
				continue
			}
			h["network namespace "+filepath.Join(netnsDir, e.Name())] = true
		}
	}
	if links, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, l := range links {
			if _, err := os.Stat(filepath.Join("/sys/class/net", l.Name(), "tun_flags")); err == nil {
				h["tap device "+l.Name()] = true
			}
		}
	}
	if loops, err := filepath.Glob("/sys/block/loop*/loop/backing_file"); err == nil {
		for _, f := range loops {
			b, _ := os.ReadFile(f)
			dev := filepath.Base(filepath.Dir(filepath.Dir(f)))
			h["loop device "+dev+" ("+strings.TrimSpace(string(b))+")"] = true
		}
	}
	return h
}

// Since lists the traces in now that were not in h, sorted.
func (h HostTraces) Since(now HostTraces) []string {
	var out []string
	for k := range now {
		if !h[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// SoakStats collects a soak's figures; safe for concurrent use.
type SoakStats struct {
	mu sync.Mutex
	// started, removed and failures count pods; starts are the start
	// times of the pods that started. Guarded by mu.
	started, removed int
	failures         []string
	starts           []time.Duration
}

// Started records a pod that started in d.
func (s *SoakStats) Started(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started++
	s.starts = append(s.starts, d)
}

// Removed records a pod removed.
func (s *SoakStats) Removed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed++
}

// Failed records a failure.
func (s *SoakStats) Failed(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, fmt.Sprintf(format, args...))
}

// Failures returns the failures recorded.
func (s *SoakStats) Failures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.failures)
}

// percentile is the nearest-rank percentile p (0..100) of sorted ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := (p*len(ds)+99)/100 - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// Summary is one line of figures: pods started and removed, failures,
// start time p50/p95/max, leftovers.
func (s *SoakStats) Summary(name string, pods, rounds, leftovers int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ds := slices.Clone(s.starts)
	slices.Sort(ds)
	var mx time.Duration
	if len(ds) > 0 {
		mx = ds[len(ds)-1]
	}
	r := func(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }
	load, _ := os.ReadFile("/proc/loadavg")
	return fmt.Sprintf("%s: %d pods at once x %d rounds: started %d, removed %d, failures %d, start p50 %s p95 %s max %s, leftovers %d (host load %s)",
		name, pods, rounds, s.started, s.removed, len(s.failures), r(percentile(ds, 50)), r(percentile(ds, 95)), r(mx), leftovers,
		strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
}

// Report logs the summary and appends it to SOAK_REPORT when set.
func (s *SoakStats) Report(t testing.TB, line string) {
	t.Helper()
	t.Log(line)
	path := os.Getenv(SoakReportEnv)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644) //nolint:gosec // G302: a report for people to read
	if err != nil {
		t.Errorf("soak report: %v", err)
		return
	}
	defer func() { _ = f.Close() }() // checked by the write below
	if _, err := fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), line); err != nil {
		t.Errorf("soak report: %v", err)
	}
}

// SoakInit is the command of a soak's container: it writes line to
// /tmp/data, waits for the exec (SoakExec) to leave its PID in /tmp/done
// and for that process to end, then exits 0. Waiting for the exec's end
// matters: the exit of a PID namespace's first process kills every other
// process in it, which would end the exec with 137.
func SoakInit(line string) []string {
	return []string{"sh", "-c", fmt.Sprintf(`echo %q > /tmp/data; while [ ! -s /tmp/done ]; do sleep 0.1; done; while kill -0 "$(cat /tmp/done)" 2>/dev/null; do sleep 0.1; done; exit 0`, line)}
}

// SoakExec is the exec of a soak's container: it prints /tmp/data once the
// container wrote it, and hands its PID to the container's init.
var SoakExec = []string{"sh", "-c", `while [ ! -e /tmp/data ]; do sleep 0.1; done; cat /tmp/data; echo $$ > /tmp/done`}
