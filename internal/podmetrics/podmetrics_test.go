package podmetrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/sandbox"
)

func self(t *testing.T) child.Process {
	t.Helper()
	p, err := child.Identify(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadProc(t *testing.T) {
	t.Run("self", func(t *testing.T) {
		u, err := ReadProc(self(t), true)
		if err != nil {
			t.Fatal(err)
		}
		if u.RSSBytes == 0 || u.PSSBytes == 0 || u.Threads == 0 || u.FDs == 0 {
			t.Errorf("got %+v, want RSS, threads and fds", u)
		}
	})
	t.Run("reused pid", func(t *testing.T) {
		p := self(t)
		p.StartTime++
		if _, err := ReadProc(p, false); !errors.Is(err, errGone) {
			t.Errorf("got %v, want errGone", err)
		}
	})
}

func TestLabels(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain", "web-0", "web-0"},
		{"newline", "a\nb\x00c", "a_b_c"},
		{"long", strings.Repeat("é", 200), strings.Repeat("é", maxPodLabel/2)},
		{"bad utf8", "a\xffb", "a_b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := LabelsFor("id", map[string]string{annotationPodName: tc.in}).PodName; got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	if got := deviceLabel(`eth0"} 1` + "\n"); got != "eth0___1_" {
		t.Errorf("device label %q", got)
	}
}

// fakeGuest is a guest that reports hostile names: more interfaces than
// the bound, names with quotes and newlines, duplicates after cleaning.
func fakeGuest(ctx context.Context) (Guest, error) {
	m := &agent.GuestMetricsResponse{
		Memory: &agent.GuestMemory{TotalBytes: 1 << 30, AvailableBytes: 1 << 29},
		Cpu:    &agent.GuestCPU{UserUsec: 2_000_000},
		Load:   &agent.GuestLoad{Load1: 0.5},
	}
	for i := range 200 {
		m.Interfaces = append(m.Interfaces, &agent.GuestInterface{Name: fmt.Sprintf("eth%d\"\n", i%50), RxBytes: uint64(i)})
	}
	m.Interfaces = append(m.Interfaces, &agent.GuestInterface{Name: "x", RxBytes: 1})
	return Guest{Metrics: m, Containers: map[string]*agent.StatsResponse{
		"c1": {Memory: &agent.MemoryStats{Usage: 1 << 20}, Cpu: &agent.CPUStats{UsageUsec: 500_000}},
	}}, nil
}

func serveFake(t *testing.T, root, id string, guest func(context.Context) (Guest, error)) {
	t.Helper()
	dir := filepath.Join(root, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := self(t)
	col := NewCollector(LabelsFor(id, map[string]string{annotationPodName: "pod-" + id, annotationPodNamespace: "ns", annotationPodUID: "uid-" + id}), Source{
		HostProcesses: func() map[string]child.Process { return map[string]child.Process{"vmm": p} },
		Guest:         guest,
		BootPhases:    func() []sandbox.Phase { return []sandbox.Phase{{Name: "start vm", Took: time.Second}} },
		Size:          func() (uint32, uint32) { return 2, 512 },
	})
	col.ObserveRPC("/hull.agent.v1.System/Health", time.Millisecond, nil)
	srv, err := Serve(dir, col, func() Info { return Info{Sandbox: id} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
}

func find(fams []*dto.MetricFamily, name string) *dto.MetricFamily {
	for _, f := range fams {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestMonitor(t *testing.T) {
	root := t.TempDir()
	serveFake(t, root, "a", fakeGuest)
	serveFake(t, root, "b", func(context.Context) (Guest, error) { return Guest{}, errors.New("agent gone") })
	// A shim that accepts and never answers: the scrape leaves it out
	// within the timeout.
	stuck := filepath.Join(root, "stuck")
	if err := os.Mkdir(stuck, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(stuck, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	// A directory without a socket, and a file, are not sandboxes.
	if err := os.Mkdir(filepath.Join(root, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	m, err := NewMonitor(root)
	if err != nil {
		t.Fatal(err)
	}
	m.ShimTimeout = 500 * time.Millisecond
	start := time.Now()
	fams, err := m.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("gather took %s with a stuck shim", took)
	}
	if v := find(fams, "hull_monitor_sandboxes").GetMetric()[0].GetGauge().GetValue(); v != 2 {
		t.Errorf("hull_monitor_sandboxes = %v, want 2", v)
	}
	if v := find(fams, "hull_monitor_shim_scrape_failures_total").GetMetric()[0].GetCounter().GetValue(); v != 1 {
		t.Errorf("scrape failures = %v, want 1 (the stuck shim)", v)
	}

	rss := find(fams, "hull_host_process_resident_memory_bytes")
	if len(rss.GetMetric()) != 2 {
		t.Fatalf("rss series: %v", rss)
	}
	for _, mt := range rss.GetMetric() {
		id := label(mt, "sandbox")
		if label(mt, "pod_name") != "pod-"+id || label(mt, "pod_namespace") != "ns" || label(mt, "pod_uid") != "uid-"+id || label(mt, "process") != "vmm" {
			t.Errorf("labels %v", mt.GetLabel())
		}
		if mt.GetGauge().GetValue() <= 0 {
			t.Errorf("rss %v", mt.GetGauge().GetValue())
		}
	}
	up := find(fams, "hull_guest_up")
	for _, mt := range up.GetMetric() {
		want := map[string]float64{"a": 1, "b": 0}[label(mt, "sandbox")]
		if mt.GetGauge().GetValue() != want {
			t.Errorf("hull_guest_up of %s = %v, want %v", label(mt, "sandbox"), mt.GetGauge().GetValue(), want)
		}
	}
	rx := find(fams, "hull_guest_network_receive_bytes_total")
	if n := len(rx.GetMetric()); n != maxGuestDevices {
		t.Errorf("%d interface series, want the bound %d", n, maxGuestDevices)
	}
	for _, mt := range rx.GetMetric() {
		if name := label(mt, "interface"); strings.ContainsAny(name, "\"\n") {
			t.Errorf("interface label %q not cleaned", name)
		}
	}
	over := find(fams, "hull_pod_overhead_memory_bytes")
	if len(over.GetMetric()) != 1 || label(over.GetMetric()[0], "sandbox") != "a" {
		t.Fatalf("overhead series: %v", over)
	}
	hostRSS := 0.0
	for _, mt := range rss.GetMetric() {
		if label(mt, "sandbox") == "a" {
			hostRSS = mt.GetGauge().GetValue()
		}
	}
	// The test process's RSS moves between reads: within 10%.
	if got, want := over.GetMetric()[0].GetGauge().GetValue(), hostRSS-(1<<20); got < want*0.9 || got > want*1.1 {
		t.Errorf("overhead %v, want about %v (host RSS minus 1 MiB of containers)", got, want)
	}
	if h := find(fams, "hull_agent_rpc_duration_seconds"); len(h.GetMetric()) != 2 || h.GetMetric()[0].GetHistogram().GetSampleCount() != 1 {
		t.Errorf("rpc histogram: %v", h)
	}
	if p := find(fams, "hull_boot_phase_seconds"); len(p.GetMetric()) != 2 || label(p.GetMetric()[0], "phase") != "start vm" {
		t.Errorf("boot phases: %v", p)
	}
	info, err := ShimInfo(context.Background(), filepath.Join(root, "a", SocketName))
	if err != nil || info.Sandbox != "a" {
		t.Errorf("info %+v, %v", info, err)
	}
}

// BenchmarkGather measures a scrape of one shim whose guest numbers are
// cached: the host side's share of `hull monitor`'s cost per sandbox.
func BenchmarkGather(b *testing.B) {
	root := b.TempDir()
	dir := filepath.Join(root, "a")
	if err := os.Mkdir(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	p, err := child.Identify(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	col := NewCollector(PodLabels{Sandbox: "a"}, Source{
		HostProcesses: func() map[string]child.Process { return map[string]child.Process{"vmm": p, "virtiofsd": p} },
		Guest:         fakeGuest,
	})
	srv, err := Serve(dir, col, func() Info { return Info{} })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Close() }()
	m, err := NewMonitor(root)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := m.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
