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
	// mode), P (protected mode), L (long mode), H (kernel half), c (short
	// loop), C (long loop). See guest.go.
	Markers string `json:"markers"`
	// LoopsPerSec is the speed of the guest's calibration loop, in
	// iterations per second; 0 when the guest did not get that far.
	LoopsPerSec uint64 `json:"loops_per_sec,omitempty"`
	// CPUVirt is "vmx" or "svm" when the CPU advertises hardware
	// virtualization in /proc/cpuinfo, else empty.
	CPUVirt string `json:"cpu_virt,omitempty"`
	// Modules are the KVM kernel modules loaded (kvm, kvm_intel, kvm_amd,
	// kvm_pvm).
	Modules []string `json:"modules,omitempty"`
	// PVM is true when the paravirtual kvm_pvm module provides /dev/kvm.
	PVM bool `json:"pvm"`
}

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

// runChild runs the probe guest and writes a line per marker, then "ok" or
// "error <message>". Write errors are ignored: w is the pipe to the parent,
// and a parent that stopped reading has given up on the probe.
func runChild(dev string, w io.Writer) int {
	_, err := runGuest(dev, func(b byte, at time.Duration) { _, _ = fmt.Fprintf(w, "marker %c %d\n", b, at) })
	if err != nil {
		_, _ = fmt.Fprintf(w, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return 0
	}
	_, _ = fmt.Fprintln(w, "ok")
	return 0
}

// Probe tells whether KVM on this host really runs a standard guest. It
// boots a tiny guest in a child process and kills it at the time limit
// (timeout, or DefaultTimeout when zero, or ctx's deadline when sooner), so
// it returns promptly even when the guest hangs inside KVM_RUN.
func Probe(ctx context.Context, timeout time.Duration) Result {
	start := time.Now()
	r := hostFacts()
	r.Device = Device
	r.At = start
	probeDevice(ctx, &r, timeout)
	r.Took = time.Since(start)
	if !r.Usable && r.PVM {
		r.Reason += "; /dev/kvm is the paravirtual kvm_pvm, which runs only PVM-enabled guest kernels at native speed"
	}
	return r
}

// report is what the probe child wrote.
type report struct {
	markers string
	at      map[byte]time.Duration
	done    bool
	err     string
}

func parseReport(lines []string) report {
	r := report{at: map[byte]time.Duration{}}
	for _, line := range lines {
		kind, rest, _ := strings.Cut(line, " ")
		switch kind {
		case "marker":
			m, ns, _ := strings.Cut(rest, " ")
			if len(m) != 1 {
				continue
			}
			r.markers += m
			if n, err := strconv.ParseInt(ns, 10, 64); err == nil {
				r.at[m[0]] = time.Duration(n)
			}
		case "ok":
			r.done = true
		case "error":
			r.err = rest
		}
	}
	return r
}

// loopRate is the calibration loop's speed in iterations per second, or 0
// when the guest did not get through it.
func (r report) loopRate() uint64 {
	h, ok1 := r.at['H']
	c, ok2 := r.at['c']
	if !ok1 || !ok2 || c <= h {
		return 0
	}
	return uint64(shortLoop * int64(time.Second) / int64(c-h))
}

func probeDevice(ctx context.Context, r *Result, timeout time.Duration) {
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
	deadline, _ := ctx.Deadline()

	// Once the calibration loop is done, a guest too slow to finish the
	// long loop in time is known; do not wait for the deadline then.
	var lines []string
	slow := false
	err := runChildProcess(ctx, r.Device, func(line string) bool {
		lines = append(lines, line)
		if line == "ok" || strings.HasPrefix(line, "error ") {
			return false // final; do not wait for the child's exit
		}
		rate := parseReport(lines).loopRate()
		if strings.HasPrefix(line, "marker c") && rate > 0 &&
			time.Duration(float64(longLoop)/float64(rate)*float64(time.Second)) > time.Until(deadline) {
			slow = true
			return false
		}
		return true
	})
	rep := parseReport(lines)
	r.Markers = rep.markers
	r.LoopsPerSec = rep.loopRate()
	step, ok := stepNames[rep.markers]
	if !ok {
		step = "wrote unexpected markers " + strconv.Quote(rep.markers)
	}
	switch {
	case rep.done && rep.markers == wantMarkers:
		r.Usable = true
		r.Reason = fmt.Sprintf("a test guest booted like a standard kernel and ran %d loop iterations in %s",
			longLoop, (rep.at['C'] - rep.at['c']).Round(time.Microsecond))
	case rep.done:
		r.Reason = "the test guest halted early: it " + step
	case rep.err != "" && rep.markers == "":
		r.Reason = "cannot run a test guest: " + rep.err
	case rep.err != "":
		r.Reason = fmt.Sprintf("the test guest %s: %s", step, rep.err)
	case slow || (ctx.Err() != nil && r.LoopsPerSec > 0):
		r.Reason = fmt.Sprintf("guest code runs at emulation speed (%d loop iterations/s, hardware-assisted KVM runs hundreds of millions): the test guest would not finish a loop of %d iterations within %s",
			r.LoopsPerSec, longLoop, timeout)
	case ctx.Err() != nil:
		r.Reason = fmt.Sprintf("the test guest hung: it %s within %s", step, timeout)
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
