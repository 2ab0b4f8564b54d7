package podmetrics

import (
	"context"
	"errors"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/hull-runtime/hull/internal/startcount"
)

// series maps a family's series to their values, keyed by the value of
// label key ("" for a series without it).
func series(f *dto.MetricFamily, key string) map[string]float64 {
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		v := m.GetGauge().GetValue()
		if m.GetCounter() != nil {
			v = m.GetCounter().GetValue()
		}
		out[label(m, key)] = v
	}
	return out
}

func TestMonitorFactory(t *testing.T) {
	for _, tc := range []struct {
		name   string
		src    FactorySource
		up     float64
		vms    map[string]float64
		claims map[string]float64
		wanted float64
		absent bool
	}{
		{
			name: "status",
			src: func(context.Context) (FactoryStatus, error) {
				return FactoryStatus{Wanted: 4, Ready: 3, Booting: 1, Hits: 17, Misses: 2}, nil
			},
			up:     1,
			vms:    map[string]float64{"ready": 3, "booting": 1},
			claims: map[string]float64{"hit": 17, "miss": 2},
			wanted: 4,
		},
		{
			name: "factory down",
			src:  func(context.Context) (FactoryStatus, error) { return FactoryStatus{}, errors.New("connection refused") },
			up:   0,
		},
		{
			name: "factory stuck",
			src: func(ctx context.Context) (FactoryStatus, error) {
				<-ctx.Done()
				return FactoryStatus{}, ctx.Err()
			},
			up: 0,
		},
		{name: "no factory", absent: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []Option
			if tc.src != nil {
				opts = append(opts, WithFactorySource(tc.src))
			}
			m, err := NewMonitor(t.TempDir(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			fams, err := m.Gather()
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > factoryTimeout+3*time.Second {
				t.Errorf("gather took %s", took)
			}
			up := find(fams, "hull_factory_up")
			if tc.absent {
				if up != nil {
					t.Fatalf("factory series without a factory: %v", up)
				}
				return
			}
			if got := series(up, "")[""]; got != tc.up {
				t.Errorf("hull_factory_up = %v, want %v", got, tc.up)
			}
			if tc.up == 0 {
				if f := find(fams, "hull_factory_vms"); f != nil {
					t.Errorf("pool series from a factory that did not answer: %v", f)
				}
				return
			}
			if got := series(find(fams, "hull_factory_vms"), "state"); !equal(got, tc.vms) {
				t.Errorf("hull_factory_vms = %v, want %v", got, tc.vms)
			}
			if got := series(find(fams, "hull_factory_claims_total"), "result"); !equal(got, tc.claims) {
				t.Errorf("hull_factory_claims_total = %v, want %v", got, tc.claims)
			}
			if got := series(find(fams, "hull_factory_vms_wanted"), "")[""]; got != tc.wanted {
				t.Errorf("hull_factory_vms_wanted = %v, want %v", got, tc.wanted)
			}
		})
	}
}

func TestMonitorStarts(t *testing.T) {
	for _, tc := range []struct {
		name       string
		events     []startcount.Event
		sandboxes  map[string]float64
		containers map[string]float64
	}{
		{
			name:       "nothing started",
			sandboxes:  map[string]float64{"ok": 0, "error": 0},
			containers: map[string]float64{"ok": 0, "error": 0},
		},
		{
			name: "starts and failures",
			events: []startcount.Event{
				startcount.SandboxStarted, startcount.SandboxFailed, startcount.SandboxFailed,
				startcount.ContainerStarted, startcount.ContainerStarted, startcount.ContainerStarted, startcount.ContainerFailed,
			},
			sandboxes:  map[string]float64{"ok": 1, "error": 2},
			containers: map[string]float64{"ok": 3, "error": 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, e := range tc.events {
				if err := startcount.Add(startcount.Path(root), e); err != nil {
					t.Fatal(err)
				}
			}
			m, err := NewMonitor(root)
			if err != nil {
				t.Fatal(err)
			}
			fams, err := m.Gather()
			if err != nil {
				t.Fatal(err)
			}
			if got := series(find(fams, "hull_sandbox_starts_total"), "result"); !equal(got, tc.sandboxes) {
				t.Errorf("hull_sandbox_starts_total = %v, want %v", got, tc.sandboxes)
			}
			if got := series(find(fams, "hull_container_starts_total"), "result"); !equal(got, tc.containers) {
				t.Errorf("hull_container_starts_total = %v, want %v", got, tc.containers)
			}
			// The counts file is not a sandbox.
			if v := series(find(fams, "hull_monitor_sandboxes"), "")[""]; v != 0 {
				t.Errorf("hull_monitor_sandboxes = %v, want 0", v)
			}
		})
	}
}

func equal(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
