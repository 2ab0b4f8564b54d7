package hostcgroup

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	systemd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/<name>, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		must(t, os.MkdirAll("testdata", 0o755))
		must(t, os.WriteFile(file, []byte(got), 0o644))
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", file, got, want)
	}
}

// TestSystemdUnit turns kubelet's and containerd's systemd forms into the
// scope, its slice and its cgroup path.
func TestSystemdUnit(t *testing.T) {
	var b strings.Builder
	for _, in := range []string{
		"kubepods-burstable-pod0a_1b.slice:cri-containerd:abc123",
		"kubepods-besteffort-pod2c.slice:cri-containerd:def456",
		"kubepods-pod3d.slice:cri-containerd:guaranteed1",
		":hull:abc",
		"-.slice:hull:abc",
		"user.slice::sub.slice",
		"/kubepods/burstable/pod0a/abc123",
	} {
		u, ok, err := SystemdUnit(in)
		if err != nil {
			t.Fatalf("SystemdUnit(%q): %v", in, err)
		}
		p, err := Resolve(in, "hull", "x")
		if err != nil {
			t.Fatalf("Resolve(%q): %v", in, err)
		}
		if !ok {
			fmt.Fprintf(&b, "%s\n\tno scope; cgroup %s\n", in, p)
			continue
		}
		fmt.Fprintf(&b, "%s\n\tslice %s\n\tscope %s\n\tcgroup %s\n", in, u.Slice, u.Name, p)
	}
	golden(t, "systemd-units.golden", b.String())
}

func TestSystemdUnitRefuses(t *testing.T) {
	for _, in := range []string{"kube/pods.slice:cri:x", "kubepods--x.slice:cri:x", "a.slice::x", "a.slice:cri:"} {
		if _, _, err := SystemdUnit(in); !errdefs.IsInvalidArgument(err) {
			t.Errorf("SystemdUnit(%q) = %v, want an invalid argument", in, err)
		}
	}
}

// TestScopeProperties is what a sandbox's scope asks systemd for.
func TestScopeProperties(t *testing.T) {
	u := Unit{Slice: "kubepods-burstable-pod0a_1b.slice", Name: "cri-containerd-abc123.scope"}
	var b strings.Builder
	for _, p := range scopeProperties(u, 4242, Limits{MemoryBytes: 768 << 20, CPUQuotaUs: 125000, CPUPeriodUs: 100000}) {
		fmt.Fprintf(&b, "%s=%s\n", p.Name, p.Value)
	}
	b.WriteString("# raised\n")
	for _, p := range limitProperties(Limits{MemoryBytes: 1280 << 20, CPUQuotaUs: 225500, CPUPeriodUs: 100000}) {
		fmt.Fprintf(&b, "%s=%s\n", p.Name, p.Value)
	}
	b.WriteString("# another period\n")
	for _, p := range limitProperties(Limits{CPUQuotaUs: 62500, CPUPeriodUs: 50000}) {
		fmt.Fprintf(&b, "%s=%s\n", p.Name, p.Value)
	}
	golden(t, "scope-properties.golden", b.String())
}

// fakeSystemd stands in for systemd's D-Bus API: a scope's start makes
// its directory below root, as systemd would, and records the calls.
type fakeSystemd struct {
	root string
	// result is the started job's result ("done" unless set).
	result string
	// gone makes StopUnit answer that the unit does not exist.
	gone  bool
	calls []string
	props map[string][]systemd.Property
}

func (f *fakeSystemd) StartTransientUnitContext(_ context.Context, name, mode string, props []systemd.Property, ch chan<- string) (int, error) {
	f.calls = append(f.calls, "start "+name+" "+mode)
	f.props["start"] = props
	if f.result != "" {
		ch <- f.result
		return 1, nil
	}
	var slice string
	for _, p := range props {
		if p.Name == "Slice" {
			slice = p.Value.Value().(string)
		}
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Join(f.root, dir, name), 0o755); err != nil {
		return 0, err
	}
	// The controllers systemd enables for a unit with accounting on.
	if err := os.WriteFile(filepath.Join(f.root, dir, name, "cgroup.controllers"), []byte("cpu memory pids\n"), 0o644); err != nil {
		return 0, err
	}
	ch <- "done"
	return 1, nil
}

func (f *fakeSystemd) SetUnitPropertiesContext(_ context.Context, name string, runtime bool, props ...systemd.Property) error {
	f.calls = append(f.calls, fmt.Sprintf("set %s runtime=%v", name, runtime))
	f.props["set"] = props
	return nil
}

func (f *fakeSystemd) StopUnitContext(_ context.Context, name, mode string, ch chan<- string) (int, error) {
	f.calls = append(f.calls, "stop "+name+" "+mode)
	if f.gone {
		return 0, godbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit " + name + " not loaded."}}
	}
	ch <- "done"
	return 2, nil
}

func (f *fakeSystemd) ResetFailedUnitContext(_ context.Context, name string) error {
	f.calls = append(f.calls, "reset-failed "+name)
	return nil
}

func (f *fakeSystemd) Close() {}

// withSystemd makes systemd look running, answering through f.
func withSystemd(t *testing.T, f *fakeSystemd) {
	t.Helper()
	oldDir, oldDial := systemdRuntimeDir, dialSystemd
	systemdRuntimeDir = t.TempDir()
	dialSystemd = func(context.Context) (systemdConn, error) { return f, nil }
	t.Cleanup(func() { systemdRuntimeDir, dialSystemd = oldDir, oldDial })
}

func propValue(props []systemd.Property, name string) any {
	for _, p := range props {
		if p.Name == name {
			return p.Value.Value()
		}
	}
	return nil
}

// TestScope follows a systemd scope through a sandbox's life: limits held
// until the first process starts the scope, then set through systemd and
// the files; later processes born in it; stopped and removed at the end.
func TestScope(t *testing.T) {
	fs := fakeV2(t)
	fakeProc(t)
	f := &fakeSystemd{root: fs.Unified, props: map[string][]systemd.Property{}}
	withSystemd(t, f)
	const cgroupsPath = "kubepods-burstable-pod1.slice:cri-containerd:sb1"
	u, _, err := SystemdUnit(cgroupsPath)
	must(t, err)
	path, err := Resolve(cgroupsPath, "", "")
	must(t, err)
	g, err := CreateUnit(fs, path, u)
	must(t, err)
	dir := filepath.Join(fs.Unified, path)

	must(t, g.SetLimits(Limits{MemoryBytes: 512 << 20, CPUQuotaUs: 100000, CPUPeriodUs: 100000}))
	if len(f.calls) != 0 {
		t.Errorf("systemd called before the scope's first process: %v", f.calls)
	}
	if d, err := g.OpenDir(); d != nil || err != nil {
		t.Fatalf("OpenDir before the scope started = %v, %v; want none", d, err)
	}
	// The first process (virtiofsd) starts the scope; its descendants
	// follow it by file writes.
	must(t, g.AddTree(100))
	if want := []string{"start cri-containerd-sb1.scope fail"}; !slices.Equal(f.calls, want) {
		t.Errorf("calls %v, want %v", f.calls, want)
	}
	start := f.props["start"]
	if got := propValue(start, "PIDs"); !slices.Equal(got.([]uint32), []uint32{100}) {
		t.Errorf("PIDs = %v", got)
	}
	if got := propValue(start, "MemoryMax"); got != uint64(512<<20) {
		t.Errorf("MemoryMax = %v, want the limit set before the start", got)
	}
	if got := propValue(start, "Delegate"); got != true {
		t.Errorf("Delegate = %v", got)
	}
	if got := read(t, filepath.Join(dir, "cgroup.procs")); got != "102" {
		t.Errorf("last pid moved %q, want the grandchild 102", got)
	}
	if !g.Created() {
		t.Error("Created() = false for a scope the runtime started")
	}
	// QEMU is born in the scope.
	d, err := g.OpenDir()
	if err != nil || d == nil {
		t.Fatalf("OpenDir after the start = %v, %v", d, err)
	}
	_ = d.Close()

	// A raise goes to systemd (kept across its reloads) and the files.
	write(t, filepath.Join(dir, "memory.swap.max"), "max")
	must(t, g.SetLimits(Limits{MemoryBytes: 1 << 30, CPUQuotaUs: 200000, CPUPeriodUs: 100000}))
	if got := f.calls[len(f.calls)-1]; got != "set cri-containerd-sb1.scope runtime=true" {
		t.Errorf("last call %q", got)
	}
	if got := propValue(f.props["set"], "MemoryMax"); got != uint64(1<<30) {
		t.Errorf("MemoryMax raised to %v", got)
	}
	for file, want := range map[string]string{"memory.max": "1073741824", "memory.swap.max": "0", "cpu.max": "200000 100000"} {
		if got := read(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}

	must(t, g.Delete())
	if got := f.calls[len(f.calls)-1]; got != "stop cri-containerd-sb1.scope replace" {
		t.Errorf("last call %q", got)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scope's cgroup left: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(dir)); err != nil {
		t.Errorf("the pod's slice removed: %v", err)
	}
}

// TestScopeFailedStart: a scope systemd does not start leaves no unit
// (reset-failed) and its process is not placed.
func TestScopeFailedStart(t *testing.T) {
	fs := fakeV2(t)
	fakeProc(t)
	f := &fakeSystemd{root: fs.Unified, result: "failed", props: map[string][]systemd.Property{}}
	withSystemd(t, f)
	g, err := CreateUnit(fs, "/system.slice/hull-x.scope", Unit{Slice: "system.slice", Name: "hull-x.scope"})
	must(t, err)
	if err := g.AddTree(100); err == nil {
		t.Fatal("AddTree succeeded without the scope")
	}
	if want := []string{"start hull-x.scope fail", "reset-failed hull-x.scope"}; !slices.Equal(f.calls, want) {
		t.Errorf("calls %v, want %v", f.calls, want)
	}
	must(t, g.Delete())
	if g.Created() {
		t.Error("Created() = true for a scope that never started")
	}
}

// TestCreateUnitWithoutSystemd: systemd is seen running by its runtime
// directory only, and a scope needs cgroup v2 (a v1 or hybrid host makes
// the cgroup itself).
func TestCreateUnitWithoutSystemd(t *testing.T) {
	old := systemdRuntimeDir
	defer func() { systemdRuntimeDir = old }()
	systemdRuntimeDir = filepath.Join(t.TempDir(), "missing")
	if SystemdRunning() {
		t.Error("SystemdRunning() without its runtime directory")
	}
	systemdRuntimeDir = t.TempDir()
	if !SystemdRunning() {
		t.Error("SystemdRunning() = false with its runtime directory")
	}
	v1 := FS{V1: []Hierarchy{{Mount: t.TempDir(), Controllers: []string{"memory"}}}}
	_, err := CreateUnit(v1, "/system.slice/hull-x.scope", Unit{Slice: "system.slice", Name: "hull-x.scope"})
	if !errdefs.IsNotImplemented(err) {
		t.Errorf("got %v, want not implemented", err)
	}
}

// TestRecordedScope: crash cleanup stops the recorded scope (one systemd
// already dropped, when its processes died, is no error) and removes its
// cgroup.
func TestRecordedScope(t *testing.T) {
	for _, gone := range []bool{false, true} {
		t.Run(fmt.Sprintf("gone=%v", gone), func(t *testing.T) {
			fs := fakeV2(t)
			f := &fakeSystemd{root: fs.Unified, gone: gone, props: map[string][]systemd.Property{}}
			withSystemd(t, f)
			const path = "/system.slice/hull-x.scope"
			must(t, os.MkdirAll(filepath.Join(fs.Unified, path), 0o755))
			g, err := Recorded(fs, path, "hull-x.scope")
			must(t, err)
			must(t, g.Delete())
			if want := []string{"stop hull-x.scope replace"}; !slices.Equal(f.calls, want) {
				t.Errorf("calls %v, want %v", f.calls, want)
			}
			if _, err := os.Stat(filepath.Join(fs.Unified, path)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("scope's cgroup left: %v", err)
			}
		})
	}
	if _, err := Recorded(FS{Unified: "/x"}, "/system.slice/a.scope", "../a.scope"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a unit name with a slash: %v", err)
	}
}
