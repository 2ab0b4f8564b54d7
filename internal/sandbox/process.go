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

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128 + the signal number when a signal
	// ended the process (as runc reports it).
	Code int
	// At is when the guest saw the process exit.
	At time.Time
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
	// state, exit and waitErr are guarded by mu; exit and waitErr are
	// final once done is closed.
	state   ProcessState
	exit    ExitStatus
	waitErr error
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
		exit = ExitStatus{Code: int(resp.GetExitStatus()), At: resp.GetExitedAt().AsTime()}
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
	p.io.close()
	p.mu.Lock()
	p.state, p.exit, p.waitErr = ProcessExited, exit, err
	p.mu.Unlock()
	close(p.done)
	if p.execID == "" {
		p.c.initExited()
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
// container.
func (p *Process) Signal(ctx context.Context, sig syscall.Signal, all bool) error {
	if p.State() == ProcessExited {
		return fmt.Errorf("signalling %s: exited: %w", p.name(), errdefs.ErrNotFound)
	}
	_, err := p.c.sb.client.Containers().SignalProcess(ctx, &agent.SignalProcessRequest{
		ContainerId: p.c.id,
		ExecId:      p.execID,
		Signal:      uint32(sig),
		All:         all,
	})
	if err != nil {
		return fmt.Errorf("signalling %s with %s: %w", p.name(), sig, p.c.sb.guestError(err))
	}
	return nil
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
