package kvm

import (
	"context"
	"fmt"
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
	t.Logf("usable=%v conclusive=%v took=%s markers=%q loops/s=%d rounds=%v cpu_virt=%q modules=%v pvm=%v\nreason: %s",
		r.Usable, r.Conclusive, r.Took, r.Markers, r.LoopsPerSec, r.RoundLoopsPerSec, r.CPUVirt, r.Modules, r.PVM, r.Reason)
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
			probeDevice(context.Background(), &r, time.Second, runChildProcess)
			if r.Usable || r.Conclusive || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("got usable=%v conclusive=%v reason %q, want unusable, inconclusive, with %q", r.Usable, r.Conclusive, r.Reason, tc.reason)
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
		best    uint64
	}{
		{"empty", nil, "", false, "", 0},
		{"complete", native(), wantMarkers, true, "", 500_000_000},
		{"emulated", emulation()[:9], "RPLHccccc", false, "", 250_000},
		{"error", []string{"error KVM_CREATE_VM: bad address"}, "", false, "KVM_CREATE_VM: bad address", 0},
		{"garbage", []string{"marker", "marker RR 1 1", "marker c 1", "marker c 1 -5", "marker c x 7", "marker c 2 1000000", "hello"}, "c", false, "", 5_000_000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := parseReport(tc.lines)
			_, best := r.rates()
			if r.markers != tc.markers || r.done != tc.done || r.err != tc.err || best != tc.best {
				t.Errorf("got markers=%q done=%v err=%q best=%d, want %q %v %q %d",
					r.markers, r.done, r.err, best, tc.markers, tc.done, tc.err, tc.best)
			}
		})
	}
}

// Lines of a probe child: marker m after the guest ran for ran.
func mark(m byte, ran time.Duration) string { return fmt.Sprintf("marker %c 0 %d", m, ran) }

// boot is the lines up to the kernel half.
func boot() []string {
	return []string{mark('R', time.Millisecond), mark('P', time.Microsecond), mark('L', time.Microsecond), mark('H', time.Microsecond)}
}

// rounds are the calibration loops, taking these times.
func rounds(ran ...time.Duration) []string {
	var ls []string
	for _, d := range ran {
		ls = append(ls, mark('c', d))
	}
	return ls
}

func lines(parts ...[]string) []string {
	var ls []string
	for _, p := range parts {
		ls = append(ls, p...)
	}
	return ls
}

const us = time.Microsecond

// native is a child on hardware-assisted KVM.
func native() []string {
	return lines(boot(), rounds(10*us, 12*us, 10*us, 11*us, 10*us), []string{mark('C', 15*time.Millisecond), "ok"})
}

// emulation is a child under kvm_pvm: 250,000 iterations/s.
func emulation() []string {
	return lines(boot(), rounds(20*time.Millisecond, 20*time.Millisecond, 21*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond),
		[]string{mark('C', 80*time.Second), "ok"})
}

// child plays a probe child that writes ls, then, when hang is set, writes
// nothing more until the probe gives up. It counts the lines the probe
// read in *read.
func child(ls []string, hang bool, read *int) childRunner {
	return func(ctx context.Context, _ string, line func(string) bool) error {
		for _, l := range ls {
			*read++
			if !line(l) {
				return nil
			}
		}
		if hang {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
}

// fakeDevice is a file standing for /dev/kvm: probeDevice and the cache
// key stat it.
func fakeDevice(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProbeStalls plays probe children on hosts that stall: a stall of the
// host thread slows one calibration loop, and must not make a KVM that
// runs guest code natively look like emulation; a verdict reached by the
// time limit is never conclusive.
func TestProbeStalls(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name       string
		lines      []string
		hang       bool
		usable     bool
		conclusive bool
		reason     string
		// read is how many lines the probe reads before it decides; 0
		// for all of them.
		read int
	}{
		{name: "native", lines: native(), usable: true, conclusive: true, reason: "ran 20000000 loop iterations in 15ms"},
		{name: "first loop stalled 2ms", lines: lines(boot(), rounds(2*ms, 10*us, 10*us, 10*us, 10*us), []string{mark('C', 15*ms), "ok"}),
			usable: true, conclusive: true},
		{name: "four loops stalled 50ms", lines: lines(boot(), rounds(50*ms, 50*ms, 10*us, 50*ms, 50*ms), []string{mark('C', 15*ms), "ok"}),
			usable: true, conclusive: true},
		{name: "long loop stalled past the limit", lines: lines(boot(), rounds(2*ms, 10*us, 10*us, 10*us, 3*ms)), hang: true,
			reason: "native speed (500000000 iterations/s)"},
		{name: "emulation", lines: emulation(), conclusive: true, reason: "emulation speed: the fastest of 5 calibration loops ran 250000 iterations/s",
			read: 9},
		{name: "emulation cut short by the limit", lines: lines(boot(), rounds(20*ms, 20*ms)), hang: true, reason: "runs slowly (250000 loop iterations/s at best)"},
		{name: "hung in real mode", lines: []string{mark('R', ms)}, hang: true, reason: "hung: it stopped entering 32-bit protected mode"},
		{name: "halted early", lines: lines(boot()[:2], []string{"ok"}), conclusive: true, reason: "halted early: it stopped entering long mode"},
		{name: "guest fault", lines: lines(boot(), []string{"error unexpected exit SHUTDOWN"}), conclusive: true,
			reason: "did not finish calibration loop 1 of 5: unexpected exit SHUTDOWN"},
		{name: "cannot open", lines: []string{"error open /dev/kvm: permission denied"}, reason: "cannot run a test guest"},
		{name: "child died", lines: boot()[:1], reason: "ended without a result"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			read := 0
			r := probe(context.Background(), fakeDevice(t), 100*time.Millisecond, child(tc.lines, tc.hang, &read))
			if r.Usable != tc.usable || r.Conclusive != tc.conclusive || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("got usable=%v conclusive=%v reason %q\nwant usable=%v conclusive=%v reason with %q",
					r.Usable, r.Conclusive, r.Reason, tc.usable, tc.conclusive, tc.reason)
			}
			if want := tc.read; want != 0 && read != want {
				t.Errorf("the probe read %d lines, want %d (it decides once every loop was slow)", read, want)
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

// TestProbeCached: a conclusive result is kept for the boot and the
// device; a negative that came from the time limit is never kept.
func TestProbeCached(t *testing.T) {
	stalled := lines(boot(), rounds(2*time.Millisecond, 10*us, 10*us, 10*us, 10*us))
	steps := []struct {
		name   string
		bootID string
		lines  []string
		hang   bool
		usable bool
		cached bool
	}{
		{"stalled past the limit", "boot-1", stalled, true, false, false},
		{"not kept", "boot-1", native(), false, true, false},
		{"kept", "boot-1", stalled, true, true, true},
		{"reboot", "boot-2", emulation(), false, false, false},
		{"conclusive negative kept", "boot-2", native(), false, false, true},
		{"reboot again", "boot-3", []string{mark('R', time.Millisecond)}, true, false, false},
		{"hang not kept", "boot-3", emulation(), false, false, false},
		{"emulation kept", "boot-3", native(), false, false, true},
	}
	dir := t.TempDir()
	dev := fakeDevice(t)
	file := filepath.Join(dir, "sub", "kvm-probe.json")
	bootID := filepath.Join(dir, "boot_id")
	old := bootIDFile
	bootIDFile = bootID
	t.Cleanup(func() { bootIDFile = old })
	for _, s := range steps {
		if err := os.WriteFile(bootID, []byte(s.bootID+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		probes := 0
		r := probeCached(context.Background(), dev, file, func(ctx context.Context) Result {
			probes++
			read := 0
			return probe(ctx, dev, 50*time.Millisecond, child(s.lines, s.hang, &read))
		})
		if r.Cached != s.cached || r.Usable != s.usable || (probes == 0) != s.cached {
			t.Errorf("%s: cached=%v usable=%v probes=%d, want cached=%v usable=%v (%s)",
				s.name, r.Cached, r.Usable, probes, s.cached, s.usable, r.Reason)
		}
	}
}
