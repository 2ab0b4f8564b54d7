package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/internal/factory"
	"github.com/hull-runtime/hull/internal/podmetrics"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// FactoryModeEnv names the environment variable that runs the suites'
// pods from the VM factory (docs/factory.md, "Testing"): "cache" (warm
// VMs of `hull factory serve`) or "template" (restored from a VM template
// made by `hull factory template create`). Unset or empty: pods boot their
// VMs (cold).
const FactoryModeEnv = "HULL_TEST_FACTORY"

// FactoryMode is how a suite's pods get their VMs.
type FactoryMode string

// The modes.
const (
	ModeCold     FactoryMode = ""
	ModeCache    FactoryMode = "cache"
	ModeTemplate FactoryMode = "template"
)

// FactoryModeFromEnv reads FactoryModeEnv.
func FactoryModeFromEnv() (FactoryMode, error) {
	switch m := FactoryMode(os.Getenv(FactoryModeEnv)); m {
	case ModeCold, ModeCache, ModeTemplate:
		return m, nil
	default:
		return "", fmt.Errorf("%s=%q: want cache, template or nothing", FactoryModeEnv, m)
	}
}

// Start is how a pod's sandbox started, the label of the shim's "sandbox
// started" log line and of hull_sandbox_start: podmetrics.StartCold, ...
func (m FactoryMode) Start() string {
	switch m {
	case ModeCache:
		return podmetrics.StartAdopted
	case ModeTemplate:
		return podmetrics.StartRestored
	}
	return podmetrics.StartCold
}

// FactoryBootTimeout bounds a warm VM's boot in the tests (TCG, a loaded
// host).
const FactoryBootTimeout = 4 * time.Minute

// Factory is the VM factory a test runs beside its containerd: in
// ModeCache a `hull factory serve` on a private socket and cgroup parent;
// in ModeTemplate the template directory of `hull factory template
// create`. Its methods take a nil or ModeCold Factory as "no factory".
type Factory struct {
	Mode FactoryMode
	// VMCache is factory.vm_cache (ModeCache).
	VMCache int
	// Socket, CgroupParent and LogPath are the factory's (ModeCache).
	Socket, CgroupParent, LogPath string
	// TemplateDir is factory.template_dir (ModeTemplate).
	TemplateDir string
	// Cmd is the running `hull factory serve`.
	Cmd *exec.Cmd
	// ownCgroups are the cgroups the test made for the factory process.
	ownCgroups []string
	// stopped is set once Stop ran.
	stopped bool
}

// NewFactory returns a factory of mode with its files in dir (a directory
// of the test's, mode 0700) and a cgroup parent named after name; vmCache
// is the warm VMs it keeps (ModeCache).
func NewFactory(mode FactoryMode, dir, name string, vmCache int) *Factory {
	return &Factory{
		Mode:         mode,
		VMCache:      vmCache,
		Socket:       filepath.Join(dir, "factory", "factory.sock"),
		CgroupParent: fmt.Sprintf("hull-e2e-factory-%d-%s", os.Getpid(), name),
		LogPath:      filepath.Join(dir, "factory.log"),
		TemplateDir:  filepath.Join(dir, "templates"),
	}
}

// on tells whether f is a factory the pods use.
func (f *Factory) on() bool { return f != nil && f.Mode != ModeCold }

// Config is the hull configuration's [factory] table of f.
func (f *Factory) Config() string {
	switch {
	case !f.on():
		return ""
	case f.Mode == ModeTemplate:
		return fmt.Sprintf("[factory]\ntemplate = true\ntemplate_dir = %q\n", f.TemplateDir)
	}
	return fmt.Sprintf("[factory]\nvm_cache = %d\nsocket = %q\ncgroup_parent = %q\n", f.VMCache, f.Socket, f.CgroupParent)
}

// Start makes f ready for the pods of the hull configuration config:
// ModeCache starts `hull factory serve` (hullBin, with shim as the warm
// shims' binary) in cgroups of its own, as a service unit has; ModeTemplate
// creates the configuration's template. The test's end stops it (Stop).
func (f *Factory) Start(t testing.TB, hullBin, config, shim string) {
	t.Helper()
	// Registered first: a start that fails half way (the factory running,
	// its cgroups not all made) is stopped and cleaned up all the same.
	t.Cleanup(func() {
		if !f.stopped {
			f.Stop(t, "")
		}
	})
	switch f.Mode {
	case ModeCache:
		f.serve(t, hullBin, config, shim)
	case ModeTemplate:
		f.createTemplate(t, hullBin, config)
	}
}

func (f *Factory) serve(t testing.TB, hullBin, config, shim string) {
	t.Helper()
	logFile, err := os.Create(f.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }()                                                                       // the factory holds its own copy
	f.Cmd = exec.Command(hullBin, "--config", config, "--log-level", "info", "factory", "serve", "--shim", shim) //nolint:gosec // G204: the binaries under test
	f.Cmd.Stdout, f.Cmd.Stderr = logFile, logFile
	f.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := f.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Cgroups of the factory's own: a claimed shim must leave them for
	// containerd's.
	if f.ownCgroups, err = OwnCgroups(f.Cmd.Process.Pid, "hull-e2e-factory-proc"); err != nil {
		t.Fatal(err)
	}
}

// templateCreated is `hull factory template create`'s report.
var templateCreated = regexp.MustCompile(`template ([0-9a-f]{64}) created`)

func (f *Factory) createTemplate(t testing.TB, hullBin, config string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), FactoryBootTimeout)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, hullBin, "--config", config, "factory", "template", "create").CombinedOutput() //nolint:gosec // G204: the binary under test
	if err != nil {
		t.Fatalf("hull factory template create: %v\n%s", err, out)
	}
	m := templateCreated.FindSubmatch(out)
	if m == nil {
		t.Fatalf("hull factory template create said %q, want its key", out)
	}
	t.Logf("template %s created in %s", m[1], time.Since(start).Round(100*time.Millisecond))
	if keys := f.templates(); len(keys) != 1 || keys[0] != string(m[1]) {
		t.Fatalf("template directory %s holds %v, want only %s", f.TemplateDir, keys, m[1])
	}
}

// templates lists the entries of the template directory.
func (f *Factory) templates() []string {
	ents, _ := os.ReadDir(f.TemplateDir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Status asks the factory for its status.
func (f *Factory) Status() (*api.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := factory.Dial(ctx, f.Socket)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }() // one call
	return c.Status(ctx)
}

// WaitReady waits until the factory has a ready warm VM not in not, and
// returns it with the status that showed it.
func (f *Factory) WaitReady(t testing.TB, not ...string) (*api.WarmVM, *api.StatusResponse) {
	t.Helper()
	deadline := time.Now().Add(FactoryBootTimeout)
	for {
		st, err := f.Status()
		if err == nil {
			for _, v := range st.Vms {
				if v.Ready && !slices.Contains(not, v.Id) {
					return v, st
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warm VM ready after %s: status %v, err %v", FactoryBootTimeout, st, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// WaitFull waits until every warm VM of a ModeCache factory is ready, so
// that each pod the next case starts (up to VMCache at once) is a hit.
// Other modes have nothing to wait for.
func (f *Factory) WaitFull(t testing.TB) {
	t.Helper()
	if !f.on() || f.Mode != ModeCache {
		return
	}
	deadline := time.Now().Add(FactoryBootTimeout)
	for {
		st, err := f.Status()
		if err == nil && int(st.Ready) >= f.VMCache {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the factory is not full after %s: status %v, err %v", FactoryBootTimeout, st, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Filter drops from what list returns the lines about the factory itself
// and about the warm VMs of its pool (ready or booting, not yet claimed):
// those that contain a pool VM's ID (its shim's, QEMU's and virtiofsd's
// command lines, its state directory and cgroups) or start with "process
// <factory pid>:". A claimed shim and its VM are the pod's, and stay.
// Without a running ModeCache factory, list's lines are returned as they
// are.
func (f *Factory) Filter(list func() []string) []string {
	if !f.on() || f.Mode != ModeCache || f.Cmd == nil || f.stopped {
		return list()
	}
	// A VM that joins the pool while list runs shows in the second status.
	before := f.poolIDs()
	lines := list()
	ids := append(before, f.poolIDs()...)
	factoryProcess := fmt.Sprintf("process %d:", f.Cmd.Process.Pid)
	var kept []string
	for _, l := range lines {
		if strings.HasPrefix(l, factoryProcess) || slices.ContainsFunc(ids, func(id string) bool { return strings.Contains(l, id) }) {
			continue
		}
		kept = append(kept, l)
	}
	return kept
}

// poolIDs lists the IDs of the pool's warm VMs.
func (f *Factory) poolIDs() []string {
	st, err := f.Status()
	if err != nil {
		return nil
	}
	var ids []string
	for _, v := range st.Vms {
		ids = append(ids, v.Id)
	}
	return ids
}

// Stop ends the factory: `hull factory serve` gets SIGTERM and must stop
// its warm VMs, after which nothing of them may be left (Leftovers of
// stateRoot, when not empty); the template directory is removed. It fails
// the test on what is left, and shows the factory's log when the test
// failed.
func (f *Factory) Stop(t testing.TB, stateRoot string) {
	t.Helper()
	if !f.on() || f.stopped {
		return
	}
	f.stopped = true
	switch f.Mode {
	case ModeCache:
		if f.Cmd == nil {
			return
		}
		var pool []*api.WarmVM
		if st, err := f.Status(); err == nil {
			pool = st.Vms
		}
		Stop(f.Cmd, 2*time.Minute)
		deadline := time.Now().Add(30 * time.Second)
		for {
			left := f.Leftovers(stateRoot, pool)
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("the stopped factory left:\n  %s", strings.Join(left, "\n  "))
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		for _, cg := range append(f.cgroups(), f.ownCgroups...) {
			_ = os.Remove(cg) // reported by Leftovers when a warm VM's
		}
		if t.Failed() {
			b, _ := os.ReadFile(f.LogPath)
			t.Logf("factory log:\n%s", b)
		}
	case ModeTemplate:
		if err := os.RemoveAll(f.TemplateDir); err != nil {
			t.Errorf("removing the templates: %v", err)
		}
	}
}

// Leftovers lists what of the factory's warm VMs is there: warm state
// directories under stateRoot (when not empty: an adopted sandbox's has
// the pod's name), the warm VMs' cgroups and control sockets, and of the
// warm VMs pool (as a status listed them), the processes whose command
// line names one (shim, QEMU, virtiofsd) and the shims still running.
func (f *Factory) Leftovers(stateRoot string, pool []*api.WarmVM) []string {
	var left []string
	if stateRoot != "" {
		dirs, _ := filepath.Glob(filepath.Join(stateRoot, sandbox.WarmIDPrefix+"*"))
		for _, d := range dirs {
			left = append(left, "state "+d)
		}
	}
	for _, cg := range f.cgroups() {
		if strings.HasPrefix(filepath.Base(cg), sandbox.WarmIDPrefix) {
			left = append(left, "cgroup "+cg)
		}
	}
	socks, _ := filepath.Glob(filepath.Join(filepath.Dir(f.Socket), sandbox.WarmIDPrefix+"*"))
	for _, s := range socks {
		left = append(left, "socket "+s)
	}
	for _, p := range Processes() {
		if slices.ContainsFunc(pool, func(v *api.WarmVM) bool { return strings.Contains(p.Cmdline, v.Id) }) {
			left = append(left, p.String())
		}
	}
	for _, v := range pool {
		if Alive(int(v.Pid)) {
			left = append(left, fmt.Sprintf("warm shim %d (%s)", v.Pid, v.Id))
		}
	}
	return left
}

// cgroups lists the factory's cgroup parent in every hierarchy, the warm
// VMs' cgroups below it first.
func (f *Factory) cgroups() []string {
	warm, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", f.CgroupParent, sandbox.WarmIDPrefix+"*"))
	v2, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", f.CgroupParent, sandbox.WarmIDPrefix+"*"))
	top, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", f.CgroupParent))
	v2top, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", f.CgroupParent))
	return append(append(append(warm, v2...), top...), v2top...)
}

// SandboxStart is one "sandbox started" line of a shim's log.
type SandboxStart struct {
	// Sandbox is the VM's ID (<sandbox>@<namespace>); Start how it started
	// (podmetrics.StartCold, ...).
	Sandbox, Start string
}

var (
	sandboxStartedLine = regexp.MustCompile(`msg="sandbox started".*`)
	// logField is one key=value of a logfmt line, a quoted value whole:
	// a key inside another field's quoted value (the start's phases) is
	// not matched.
	logField = regexp.MustCompile(`([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)`)
)

// SandboxStarts finds the shims' "sandbox started" lines in a containerd
// log (the shims write theirs into containerd's), in order.
func SandboxStarts(log string) []SandboxStart {
	var starts []SandboxStart
	for _, l := range sandboxStartedLine.FindAllString(log, -1) {
		var s SandboxStart
		for _, m := range logField.FindAllStringSubmatch(l, -1) {
			v := strings.Trim(m[2], `"`)
			switch m[1] {
			case "sandbox":
				s.Sandbox = v
			case "start":
				s.Start = v
			}
		}
		starts = append(starts, s)
	}
	return starts
}

// Cold says which of a case's sandbox starts cannot use the factory by
// design, and why: Pods of them, in the modes listed (all modes when
// empty).
type Cold struct {
	Pods  int
	Modes []FactoryMode
	Why   string
	// Unclaimed says that those pods' own configuration has no factory:
	// in ModeCache their shims must claim no warm VM (the factory's hits
	// and misses do not move for them) and they boot cold, never
	// warm_refused.
	Unclaimed bool
}

// colds is how many of a case's pods boot in mode.
func (c Cold) colds(mode FactoryMode) int {
	if len(c.Modes) == 0 || slices.Contains(c.Modes, mode) {
		return c.Pods
	}
	return 0
}

// StartTally counts a suite's sandbox starts by how they started.
type StartTally map[string]int

// Claims are a ModeCache factory's claim counters at a case's start
// (BeginCase), which CheckStarts compares with the counters at its end.
type Claims struct {
	hits, misses uint64
	// ok is false without a ModeCache factory, or when its status failed.
	ok bool
}

// BeginCase readies f for a case: a ModeCache factory's pool is full
// (WaitFull), and its claim counters are returned for CheckStarts.
func (f *Factory) BeginCase(t testing.TB) Claims {
	t.Helper()
	if !f.on() || f.Mode != ModeCache {
		return Claims{}
	}
	f.WaitFull(t)
	st, err := f.Status()
	if err != nil {
		t.Fatalf("factory status: %v", err)
	}
	return Claims{hits: st.Hits, misses: st.Misses, ok: true}
}

// CheckStarts checks the sandbox starts a case logged (log: containerd's
// log of the case): in mode, each must have started from the factory
// (adopted, or restored) but for cold.Pods of them, which must have booted
// (cold, or warm_refused: a warm VM claimed for the pod could not serve
// it; only cold when cold.Unclaimed), for the reason cold.Why. In
// ModeCache the factory's counters since BeginCase (before) must show no
// miss (each case starts with a full pool, and one that claims more VMs
// than the pool holds waits for a refill in between: WaitFull), a hit for
// each adopted sandbox and, with cold.Unclaimed, no claim for its cold
// pods. Without a factory it checks nothing. It adds the starts to tally.
func (f *Factory) CheckStarts(t testing.TB, log string, cold Cold, tally StartTally, before Claims) {
	t.Helper()
	if !f.on() {
		return
	}
	starts := SandboxStarts(log)
	counts := map[string]int{}
	for _, s := range starts {
		counts[s.Start]++
		tally[s.Start]++
	}
	wantCold := cold.colds(f.Mode)
	booted := counts[podmetrics.StartCold] + counts[podmetrics.StartWarmRefused]
	why := ""
	if wantCold > 0 {
		why = " (" + cold.Why + ")"
	}
	if booted != wantCold || counts[f.Mode.Start()] != len(starts)-wantCold {
		t.Errorf("%s mode: sandbox starts %v, want %d %s and %d booted%s", f.Mode, starts, len(starts)-wantCold, f.Mode.Start(), wantCold, why)
	} else if wantCold > 0 {
		t.Logf("%s mode: %d of %d sandboxes booted by design (%v): %s", f.Mode, wantCold, len(starts), starts, cold.Why)
	}
	unclaimed := cold.Unclaimed && wantCold > 0
	if unclaimed && counts[podmetrics.StartWarmRefused] != 0 {
		t.Errorf("%s mode: %d sandboxes refused a warm VM they should not have claimed%s", f.Mode, counts[podmetrics.StartWarmRefused], why)
	}
	if !before.ok {
		return
	}
	st, err := f.Status()
	if err != nil {
		t.Errorf("factory status: %v", err)
		return
	}
	hits, misses := st.Hits-before.hits, st.Misses-before.misses
	adopted := uint64(counts[podmetrics.StartAdopted]) //nolint:gosec // G115: a count
	t.Logf("factory during the case: %d hits, %d misses; %d sandboxes adopted", hits, misses, adopted)
	if misses != 0 {
		t.Errorf("factory: %d claims missed during the case, which started with a full pool of %d: a pod booted cold where a warm VM was ready, "+
			"or the case claims more VMs than the pool holds without waiting for a refill (WaitFull)", misses, f.VMCache)
	}
	if hits < adopted {
		t.Errorf("factory: %d hits for %d adopted sandboxes", hits, adopted)
	}
	if unclaimed && hits != adopted {
		t.Errorf("factory: %d hits for %d adopted sandboxes: pods whose configuration has no factory took warm VMs%s", hits, adopted, why)
	}
}

// String is the tally, e.g. "adopted 14, cold 2".
func (s StartTally) String() string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, s[k])
	}
	return strings.Join(parts, ", ")
}

// CheckSuite checks a suite's end in mode: a ModeCache factory missed no
// claim (each case waited for a full pool, so a miss is a pod that booted
// when it should not have) and refilled without errors, and the suite
// started at least one sandbox from the factory.
func (f *Factory) CheckSuite(t testing.TB, tally StartTally) {
	t.Helper()
	if !f.on() {
		return
	}
	t.Logf("%s mode: sandbox starts: %s", f.Mode, tally)
	if tally[f.Mode.Start()] == 0 {
		t.Errorf("%s mode: no sandbox started from the factory", f.Mode)
	}
	if f.Mode != ModeCache {
		return
	}
	st, err := f.Status()
	if err != nil {
		t.Errorf("factory status: %v", err)
		return
	}
	t.Logf("factory: %d hits, %d misses, %d refill errors", st.Hits, st.Misses, st.RefillErrors)
	if st.Misses != 0 || st.RefillErrors != 0 {
		t.Errorf("factory: %d misses, %d refill errors (last %q), want none", st.Misses, st.RefillErrors, st.LastError)
	}
	if int(st.Hits) < tally[podmetrics.StartAdopted] {
		t.Errorf("factory: %d hits for %d adopted sandboxes", st.Hits, tally[podmetrics.StartAdopted])
	}
}
