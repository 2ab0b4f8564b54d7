package kvm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// slack is how much longer than its limit a probe may take: process start
// and kill.
const slack = time.Second

func TestProbe(t *testing.T) {
	const limit = 2 * time.Second
	r := Probe(context.Background(), limit)
	t.Logf("usable=%v took=%s markers=%q loops/s=%d cpu_virt=%q modules=%v pvm=%v\nreason: %s",
		r.Usable, r.Took, r.Markers, r.LoopsPerSec, r.CPUVirt, r.Modules, r.PVM, r.Reason)
	if r.Took > limit+slack {
		t.Errorf("probe took %s, limit %s", r.Took, limit)
	}
	if r.Reason == "" {
		t.Error("no reason given")
	}
	if r.PVM && r.Usable {
		t.Error("kvm_pvm is loaded but the probe says KVM is usable for standard guests")
	}
	if r.PVM && !strings.Contains(r.Reason, "kvm_pvm") {
		t.Errorf("reason does not name kvm_pvm: %s", r.Reason)
	}
}

func TestProbeRespectsContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := Probe(ctx, 10*time.Second)
	if took := time.Since(start); took > slack {
		t.Errorf("probe took %s after a 5ms context", took)
	}
	if _, err := os.Stat(Device); err == nil && r.Usable && r.Took > 5*time.Millisecond+slack {
		t.Errorf("usable after the deadline: %+v", r)
	}
}

func TestProbeDevice(t *testing.T) {
	tests := []struct {
		name   string
		device string
		reason string
	}{
		{"missing", "/nonexistent/kvm", "does not exist"},
		{"not a kvm device", "/dev/null", "cannot run a test guest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Result{Device: tc.device}
			probeDevice(context.Background(), &r, time.Second)
			if r.Usable || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("got usable=%v reason %q, want unusable with %q", r.Usable, r.Reason, tc.reason)
			}
		})
	}
}

func TestParseReport(t *testing.T) {
	tests := []struct {
		name    string
		lines   []string
		markers string
		done    bool
		err     string
		rate    uint64
	}{
		{"empty", nil, "", false, "", 0},
		{"complete", []string{"marker R 10", "marker P 20", "marker L 30", "marker H 1000", "marker c 21000", "marker C 40000", "ok"},
			"RPLHcC", true, "", 1_000_000_000},
		{"emulated", []string{"marker R 10", "marker P 20", "marker L 30", "marker H 0", "marker c 40000000"},
			"RPLHc", false, "", 500_000},
		{"error", []string{"error KVM_CREATE_VM: bad address"}, "", false, "KVM_CREATE_VM: bad address", 0},
		{"garbage", []string{"marker", "marker RR 1", "hello"}, "", false, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := parseReport(tc.lines)
			if r.markers != tc.markers || r.done != tc.done || r.err != tc.err || r.loopRate() != tc.rate {
				t.Errorf("got markers=%q done=%v err=%q rate=%d, want %q %v %q %d",
					r.markers, r.done, r.err, r.loopRate(), tc.markers, tc.done, tc.err, tc.rate)
			}
		})
	}
}

func TestCPUVirtFlag(t *testing.T) {
	tests := []struct {
		name, cpuinfo, want string
	}{
		{"intel", "processor\t: 0\nflags\t\t: fpu vme vmx sse\n", "vmx"},
		{"amd", "processor\t: 0\nflags\t\t: fpu svm lm\n", "svm"},
		{"none", "processor\t: 0\nflags\t\t: fpu hypervisor lm\n", ""},
		{"no flags line", "processor\t: 0\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cpuinfo")
			if err := os.WriteFile(p, []byte(tc.cpuinfo), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := cpuVirtFlag(p); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestProbeCached(t *testing.T) {
	if _, err := os.Stat(Device); err != nil {
		t.Skipf("%s: %v", Device, err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "sub", "kvm-probe.json")
	bootID := filepath.Join(dir, "boot_id")
	old := bootIDFile
	bootIDFile = bootID
	t.Cleanup(func() { bootIDFile = old })

	steps := []struct {
		name   string
		bootID string
		cached bool
	}{
		{"first probe", "boot-1", false},
		{"same boot", "boot-1", true},
		{"after a reboot", "boot-2", false},
		{"same boot again", "boot-2", true},
	}
	var first Result
	for i, s := range steps {
		if err := os.WriteFile(bootID, []byte(s.bootID+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := ProbeCached(context.Background(), 2*time.Second, file)
		if r.Cached != s.cached {
			t.Errorf("%s: cached=%v, want %v", s.name, r.Cached, s.cached)
		}
		if i == 0 {
			first = r
		} else if r.Usable != first.Usable {
			t.Errorf("%s: result changed: %+v vs %+v", s.name, r, first)
		}
	}
}
