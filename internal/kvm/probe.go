package kvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Device is the KVM device node.
const Device = "/dev/kvm"

// DefaultTimeout is the probe's time limit when the caller gives none. The
// probe guest needs a few milliseconds on a working KVM.
const DefaultTimeout = 2 * time.Second

// Result is what Probe found.
type Result struct {
	// Usable is true when a guest that boots the way a standard Linux
	// kernel does ran to completion under KVM.
	Usable bool `json:"usable"`
	// Reason says why KVM is or is not usable, in one sentence.
	Reason string `json:"reason"`
	// Conclusive is true when the verdict does not depend on how busy the
	// host was: the guest finished (Usable), misbehaved, or ran every
	// calibration loop at emulation speed. A negative verdict that came
	// from the time limit (a guest that hung, or that showed native speed
	// once but did not finish in time) is not conclusive, and ProbeCached
	// does not keep it.
	Conclusive bool `json:"conclusive"`
	// Took is how long the probe ran.
	Took time.Duration `json:"took"`
	// At is when the probe ran.
	At time.Time `json:"at"`
	// Cached is true when the result came from the cache file.
	Cached bool `json:"-"`

	// Facts, for diagnostics.

	// Device is the probed device node.
	Device string `json:"device"`
	// Markers are the steps the probe guest reported, in order: R (real
	// mode), P (protected mode), L (long mode), H (kernel half), c (one per
	// calibration loop), C (long loop). See guest.go.
	Markers string `json:"markers"`
	// LoopsPerSec is the speed of the fastest calibration loop, in
	// iterations per second; 0 when the guest did not get that far.
	LoopsPerSec uint64 `json:"loops_per_sec,omitempty"`
	// RoundLoopsPerSec is the speed of each calibration loop the guest
	// finished, in order.
	RoundLoopsPerSec []uint64 `json:"round_loops_per_sec,omitempty"`
	// CPUVirt is "vmx" or "svm" when the CPU advertises hardware
	// virtualization in /proc/cpuinfo, else empty.
	CPUVirt string `json:"cpu_virt,omitempty"`
	// Modules are the KVM kernel modules loaded (kvm, kvm_intel, kvm_amd,
	// kvm_pvm).
	Modules []string `json:"modules,omitempty"`
	// PVM is true when the paravirtual kvm_pvm module provides /dev/kvm.
	PVM bool `json:"pvm"`
}

// slowRate is the calibration speed, in loop iterations per second, below
// which a calibration loop ran at emulation speed. Emulation (kvm_pvm with
// a standard guest) runs 0.2 to 0.5 million; a vCPU that runs guest code
// natively runs hundreds of millions to billions, a few microseconds per
// loop even with the exit to the host of nested virtualization. A loop is
// counted slow only when it took more than 1 ms, so a single stall of the
// host thread longer than that slows one loop; the verdict "emulation
// speed" needs every loop slow.
const slowRate = 5_000_000

// childEnv carries the device to probe to the child process; its presence
// makes the process a probe child (see init).
const childEnv = "_HULL_KVM_PROBE_DEVICE"

func init() {
	// The probe re-executes the running binary (/proc/self/exe) with
	// childEnv set; any binary that links this package, test binaries
	// included, then acts as the probe child and never reaches main.
	if dev, ok := os.LookupEnv(childEnv); ok {
		os.Exit(runChild(dev, os.Stdout))
	}
}

// runChild runs the probe guest and writes a line per marker ("marker",
// the marker, the nanoseconds since the guest started and those the guest
// ran since its previous exit), then "ok" or "error <message>". Write
// errors are ignored: w is the pipe to the parent, and a parent that
// stopped reading has given up on the probe.
func runChild(dev string, w io.Writer) int {
	_, err := runGuest(dev, func(b byte, at, ran time.Duration) {
		_, _ = fmt.Fprintf(w, "marker %c %d %d\n", b, at, ran)
	})
	if err != nil {
		_, _ = fmt.Fprintf(w, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return 0
	}
	_, _ = fmt.Fprintln(w, "ok")
	return 0
}

// childRunner runs a probe child for dev and hands each line it writes to
// line until line returns false or ctx ends (see runChildProcess). Tests
// replace it to play children that stall.
type childRunner func(ctx context.Context, dev string, line func(string) bool) error

// Probe tells whether KVM on this host really runs a standard guest. It
// boots a tiny guest in a child process and kills it at the time limit
// (timeout, or DefaultTimeout when zero, or ctx's deadline when sooner), so
// it returns promptly even when the guest hangs inside KVM_RUN.
func Probe(ctx context.Context, timeout time.Duration) Result {
	return probe(ctx, Device, timeout, runChildProcess)
}

func probe(ctx context.Context, dev string, timeout time.Duration, run childRunner) Result {
	start := time.Now()
	r := hostFacts()
	r.Device = dev
	r.At = start
	probeDevice(ctx, &r, timeout, run)
	r.Took = time.Since(start)
	if !r.Usable && r.PVM {
		r.Reason += "; /dev/kvm is the paravirtual kvm_pvm, which runs only PVM-enabled guest kernels at native speed"
	}
	return r
}

// report is what the probe child wrote.
type report struct {
	markers string
	// rounds are the times the calibration loops ran, in order.
	rounds []time.Duration
	// long is the time the long loop ran.
	long time.Duration
	done bool
	err  string
}

func parseReport(lines []string) report {
	var r report
	for _, line := range lines {
		kind, rest, _ := strings.Cut(line, " ")
		switch kind {
		case "marker":
			f := strings.Fields(rest)
			if len(f) != 3 || len(f[0]) != 1 {
				continue
			}
			_, err1 := strconv.ParseInt(f[1], 10, 64)
			ran, err2 := strconv.ParseInt(f[2], 10, 64)
			if err1 != nil || err2 != nil || ran < 0 {
				continue
			}
			r.markers += f[0]
			switch f[0] {
			case "c":
				r.rounds = append(r.rounds, time.Duration(ran))
			case "C":
				r.long = time.Duration(ran)
			}
		case "ok":
			r.done = true
		case "error":
			r.err = rest
		}
	}
	return r
}

// rate is a calibration loop's speed in iterations per second.
func rate(ran time.Duration) uint64 {
	if ran <= 0 {
		return shortLoop * uint64(time.Second)
	}
	return uint64(shortLoop * int64(time.Second) / int64(ran))
}

// rates are the speeds of the calibration loops and the fastest of them.
func (r report) rates() (each []uint64, best uint64) {
	for _, d := range r.rounds {
		each = append(each, rate(d))
		best = max(best, rate(d))
	}
	return each, best
}

// emulated is true when the guest ran every calibration loop, each at
// emulation speed.
func (r report) emulated() bool {
	_, best := r.rates()
	return len(r.rounds) == calibrationRounds && best < slowRate
}

func probeDevice(ctx context.Context, r *Result, timeout time.Duration, run childRunner) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if _, err := os.Stat(r.Device); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			r.Reason = r.Device + " does not exist (no KVM module loaded, or the device is not passed to this container)"
			return
		}
		r.Reason = err.Error()
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Once every calibration loop ran at emulation speed the verdict is
	// known; do not wait for the long loop then. A single fast loop means
	// the vCPU can run natively: wait for the long loop, to the deadline.
	var lines []string
	err := run(ctx, r.Device, func(line string) bool {
		lines = append(lines, line)
		if line == "ok" || strings.HasPrefix(line, "error ") {
			return false // final; do not wait for the child's exit
		}
		return !strings.HasPrefix(line, "marker c ") || !parseReport(lines).emulated()
	})
	rep := parseReport(lines)
	r.Markers = rep.markers
	r.RoundLoopsPerSec, r.LoopsPerSec = rep.rates()
	step := describeMarkers(rep.markers)
	switch {
	case rep.done && rep.markers == wantMarkers:
		r.Usable, r.Conclusive = true, true
		r.Reason = fmt.Sprintf("a test guest booted like a standard kernel and ran %d loop iterations in %s",
			longLoop, rep.long.Round(time.Microsecond))
	case rep.done:
		r.Conclusive = true
		r.Reason = "the test guest halted early: it " + step
	case rep.err != "" && rep.markers == "":
		// Cheap to try again, and may depend on the caller (permissions).
		r.Reason = "cannot run a test guest: " + rep.err
	case rep.err != "":
		r.Conclusive = true
		r.Reason = fmt.Sprintf("the test guest %s: %s", step, rep.err)
	case rep.emulated():
		r.Conclusive = true
		r.Reason = fmt.Sprintf("guest code runs at emulation speed: the fastest of %d calibration loops ran %d iterations/s, hardware-assisted KVM runs hundreds of millions",
			calibrationRounds, r.LoopsPerSec)
	case ctx.Err() != nil && r.LoopsPerSec >= slowRate:
		r.Reason = fmt.Sprintf("the test guest ran a calibration loop at native speed (%d iterations/s) but %s within %s: the host may be overloaded; not a verdict on KVM, the next probe tries again",
			r.LoopsPerSec, step, timeout)
	case ctx.Err() != nil && r.LoopsPerSec > 0:
		r.Reason = fmt.Sprintf("guest code runs slowly (%d loop iterations/s at best) and the test guest %s within %s; not conclusive, the next probe tries again",
			r.LoopsPerSec, step, timeout)
	case ctx.Err() != nil:
		r.Reason = fmt.Sprintf("the test guest hung: it %s within %s; not conclusive, the next probe tries again", step, timeout)
	case err != nil:
		r.Reason = "running the probe child: " + err.Error()
	default:
		r.Reason = "the probe child ended without a result"
	}
}

// runChildProcess runs the probe child and hands each line it writes to
// line; when line returns false, or ctx ends, it kills the child and returns
// without waiting for a child that does not die.
func runChildProcess(ctx context.Context, dev string, line func(string) bool) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer func() { _ = pr.Close() }()

	cmd := &exec.Cmd{
		Path:   "/proc/self/exe",
		Args:   []string{"hull-kvm-probe"},
		Env:    []string{childEnv + "=" + dev},
		Stdout: pw,
		// A parent that dies must not leave a guest behind. The thread
		// that starts the child stays locked until the child is reaped
		// (see startLocked), so the death signal tracks the process.
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
	waited := make(chan error, 1)
	if err := startLocked(cmd, waited); err != nil {
		_ = pw.Close()
		return err
	}
	_ = pw.Close()

	lines := make(chan string)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-stop:
				return
			}
		}
	}()
	kill := func() {
		_ = cmd.Process.Kill()
		// Give a killed child a moment to be reaped, but never block on
		// one stuck in the kernel.
		select {
		case <-waited: //nolint:errcheck // the killed child is reaped; its exit status says nothing (S1005 forbids "_ =")
		case <-time.After(100 * time.Millisecond):
		}
	}
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				// EOF: the child exited or closed its stdout.
				select {
				case err := <-waited:
					return err
				case <-ctx.Done():
					kill()
					return ctx.Err()
				}
			}
			if !line(l) {
				kill()
				return nil
			}
		case <-ctx.Done():
			kill()
			return ctx.Err()
		}
	}
}

// startLocked starts cmd from a goroutine locked to its OS thread and waits
// for it there, sending Wait's result to waited. Pdeathsig fires when the
// thread that forked the child exits; keeping that thread busy in wait(2)
// until the child is gone means the signal fires only when the whole parent
// dies.
func startLocked(cmd *exec.Cmd, waited chan<- error) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			runtime.UnlockOSThread()
			return
		}
		started <- nil
		err := cmd.Wait()
		runtime.UnlockOSThread()
		waited <- err
	}()
	return <-started
}
