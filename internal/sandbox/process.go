package sandbox

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// ProcessState is where a process is in its life.
type ProcessState string

// The process states. Transitions only go forward.
const (
	ProcessCreated ProcessState = "created"
	ProcessRunning ProcessState = "running"
	ProcessExited  ProcessState = "exited"
)

var processTransitions = map[ProcessState][]ProcessState{
	ProcessCreated: {ProcessRunning, ProcessExited},
	ProcessRunning: {ProcessExited},
}

// KilledStatus is the exit code of a process ended by SIGKILL (128 + 9),
// the code the host declares for one whose exit the guest did not report
// in time.
const KilledStatus = 128 + int(syscall.SIGKILL)

// maxExitCode is the largest exit code a process can have; a guest that
// reports more is lying, and the process is reported lost (255).
const maxExitCode = 255

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128 + the signal number when a signal
	// ended the process (as runc reports it).
	Code int
	// At is when the guest saw the process exit (the host's clock when
	// the host declared it).
	At time.Time
	// Declared is set when the guest did not report the exit of a
	// process told to SIGKILL within the kill timeout, and the host
	// declared it dead with KilledStatus. The guest's report, should it
	// come later, is ignored.
	Declared bool
}

// Process is a container's init process or one started by Exec.
type Process struct {
	c *Container
	// execID is empty for the init process.
	execID string
	pid    uint32
	io     *stdio

	// done is closed when the exit (or the error that ended the wait) is
	// known.
	done chan struct{}

	mu sync.Mutex
	// state, exit, waitErr and killArmed are guarded by mu; exit and
	// waitErr are final once done is closed.
	state   ProcessState
	exit    ExitStatus
	waitErr error
	// killArmed is set once a SIGKILL started the kill timeout.
	killArmed bool
}

// ID is the exec ID, or "" for the init process.
func (p *Process) ID() string { return p.execID }

// Pid is the process's PID in the guest.
func (p *Process) Pid() uint32 { return p.pid }

// State returns the process's lifecycle state.
func (p *Process) State() ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

func (p *Process) name() string {
	if p.execID == "" {
		return fmt.Sprintf("init process of container %s", p.c.id)
	}
	return fmt.Sprintf("process %s of container %s", p.execID, p.c.id)
}

func (p *Process) transition(to ProcessState) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, allowed := range processTransitions[p.state] {
		if allowed == to {
			p.state = to
			return nil
		}
	}
	return fmt.Errorf("%s: cannot go from %s to %s: %w", p.name(), p.state, to, errdefs.ErrFailedPrecondition)
}

// watch waits for the process's exit in the background, for the life of the
// sandbox, and then waits for its output to be copied.
func (p *Process) watch() {
	ctx := p.c.sb.bg
	resp, err := p.c.sb.client.Containers().WaitProcess(ctx, &agent.WaitProcessRequest{
		ContainerId: p.c.id,
		ExecId:      p.execID,
	})
	var exit ExitStatus
	if err == nil {
		exit = p.guestExit(resp)
		// The agent has sent all output before answering; the copies end
		// as soon as they have read it. Bound the wait anyway: a host
		// writer that blocks must not hold the exit forever.
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		if werr := p.io.waitOutput(wctx); werr != nil {
			log.G(ctx).WithError(werr).WithField("container", p.c.id).Warnf("%s: output not fully copied", p.name())
		}
		cancel()
	} else {
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("waiting for %s: sandbox %s stopped: %w", p.name(), p.c.sb.id, errdefs.ErrUnavailable)
		default:
			err = fmt.Errorf("waiting for %s: %w", p.name(), p.c.sb.guestError(err))
		}
	}
	p.settle(exit, err)
}

// guestExit checks the exit status the guest reports: a code outside
// 0..255 is no process's and becomes 255; a time that is missing or in the future is
// replaced by the host's clock.
func (p *Process) guestExit(resp *agent.WaitProcessResponse) ExitStatus {
	now := time.Now()
	exit := ExitStatus{Code: int(resp.GetExitStatus()), At: now}
	if exit.Code < 0 || exit.Code > maxExitCode {
		log.G(p.c.sb.bg).WithField("container", p.c.id).WithField("status", resp.GetExitStatus()).
			Warnf("%s: the guest reported an impossible exit status; reporting %d", p.name(), maxExitCode)
		exit.Code = maxExitCode
	}
	if ts := resp.GetExitedAt(); ts.IsValid() && ts.AsTime().After(time.Unix(0, 0)) && !ts.AsTime().After(now) {
		exit.At = ts.AsTime()
	}
	return exit
}

// settle records how the process ended, once: it closes its streams, sets
// the exit or the error that ended the wait and releases Wait. It reports
// whether this call settled it; later calls (a guest report after the host
// declared the process dead) change nothing.
func (p *Process) settle(exit ExitStatus, err error) bool {
	p.mu.Lock()
	if p.state == ProcessExited {
		p.mu.Unlock()
		return false
	}
	p.state, p.exit, p.waitErr = ProcessExited, exit, err
	p.mu.Unlock()
	p.io.close()
	// The container is stopped before anyone waiting for its init sees
	// the exit, so a delete that follows the wait finds it stopped.
	if p.execID == "" {
		p.c.initExited()
	}
	close(p.done)
	return true
}

// armKill starts the kill timeout of a running process told to SIGKILL:
// unless the guest reports its exit within the sandbox's kill timeout, the
// host declares it dead (declareKilled). Only the first SIGKILL arms it.
func (p *Process) armKill() {
	p.mu.Lock()
	if p.killArmed || p.state != ProcessRunning {
		p.mu.Unlock()
		return
	}
	p.killArmed = true
	p.mu.Unlock()
	sb := p.c.sb
	go func() {
		t := time.NewTimer(sb.killTimeout)
		defer t.Stop()
		select {
		case <-p.done:
		case <-sb.bg.Done():
			// The sandbox stops: the waiter ends the process.
		case <-t.C:
			p.declareKilled()
		}
	}()
}

// declareKilled ends a process the guest was told to kill and did not
// report gone: its exit is KilledStatus, now.
func (p *Process) declareKilled() {
	if p.settle(ExitStatus{Code: KilledStatus, At: time.Now(), Declared: true}, nil) {
		log.G(p.c.sb.bg).WithField("container", p.c.id).
			Warnf("%s: the guest did not report its exit within %s of SIGKILL; declared dead with status %d",
				p.name(), p.c.sb.killTimeout, KilledStatus)
	}
}

// abandon ends a process that was never started (its container was deleted
// or its sandbox stopped first), so that Wait returns err.
func (p *Process) abandon(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != ProcessCreated {
		return
	}
	p.state, p.waitErr = ProcessExited, err
	close(p.done)
}

// Wait returns the process's exit status once it has exited and its output
// has been copied to the host's writers, or ctx's error when ctx ends first.
// It fails when the sandbox stops or its VM dies before the process exits.
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return ExitStatus{}, fmt.Errorf("waiting for %s: %w", p.name(), ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit, p.waitErr
}

// Signal sends sig to the process, or with all to every process of the
// container. SIGKILL also starts the kill timeout of each process it is
// meant for, whatever the guest answers: a process the guest does not
// report gone in time is declared dead by the host.
func (p *Process) Signal(ctx context.Context, sig syscall.Signal, all bool) error {
	if p.State() == ProcessExited {
		return fmt.Errorf("signalling %s: exited: %w", p.name(), errdefs.ErrNotFound)
	}
	if sig == syscall.SIGKILL {
		p.armKill()
		if all {
			for _, q := range p.c.processes() {
				q.armKill()
			}
		}
	}
	_, err := p.c.sb.client.Containers().SignalProcess(ctx, &agent.SignalProcessRequest{
		ContainerId: p.c.id,
		ExecId:      p.execID,
		Signal:      uint32(sig),
		All:         all,
	})
	if err == nil {
		return nil
	}
	// guestError gives a broken connection a moment to be seen as the
	// VM's exit: the connection ends a moment before QEMU is reaped.
	err = p.c.sb.guestError(err)
	if hypervisor.IsExited(err) || !p.c.sb.vmAlive() {
		// The process ended with its VM: a signal finds it gone, as one
		// to a process that exited does, and the caller waits for the
		// exit the VM's end reports (a forced delete, the CRI's stop).
		return fmt.Errorf("signalling %s with %s: %w: the VM exited: %v", p.name(), sig, errdefs.ErrNotFound, err) //nolint:errorlint // classed as not found, not as the VM's error
	}
	return fmt.Errorf("signalling %s with %s: %w", p.name(), sig, err)
}

// ResizeTTY sets the size of the process's terminal.
func (p *Process) ResizeTTY(ctx context.Context, width, height uint32) error {
	_, err := p.c.sb.client.Containers().ResizeTTY(ctx, &agent.ResizeTTYRequest{
		ContainerId: p.c.id,
		ExecId:      p.execID,
		Width:       width,
		Height:      height,
	})
	if err != nil {
		return fmt.Errorf("resizing the terminal of %s: %w", p.name(), p.c.sb.guestError(err))
	}
	return nil
}
