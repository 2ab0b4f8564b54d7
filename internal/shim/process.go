package shim

import (
	"context"
	"fmt"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hull-runtime/hull/internal/ocispec"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// vmLostStatus is the exit status of a process whose VM died under it (or
// whose guest stopped answering): the status is unknowable, and 255 is what
// runtimes report for that.
const vmLostStatus = 255

// container is a task: a container of the sandbox with its init process
// and its execs.
type container struct {
	id     string
	bundle string
	// role is the container's place in its pod.
	role role
	c    *sandbox.Container
	init *proc
	// hooks are the container's host hooks (runtime.host_hooks) and
	// annotations the annotations of their state.
	hooks       ocispec.HostHooks
	annotations map[string]string

	mu sync.Mutex
	// execs are the processes added by Exec, by exec ID; guarded by mu.
	execs map[string]*proc
}

// proc is a process as the task API sees it: created (an exec before its
// Start), running, or exited with a status.
type proc struct {
	// id is the exec ID, "" for the init process.
	id    string
	paths stdioPaths
	// spec is an exec's process, until it starts.
	spec *specs.Process

	// done is closed once the exit is known and the output written.
	done chan struct{}

	mu sync.Mutex
	// sp, pid, io, run, made, status and exitedAt are guarded by mu; status
	// and exitedAt are final once done is closed. pid is the guest's
	// number for the process, as the guest reported it: it names nothing
	// on the host and is never reported to containerd (see pids.go).
	sp  *sandbox.Process
	pid uint32
	io  *processIO
	// run is set once the process's program has been started.
	run bool
	// made is set once the host created the process in the sandbox
	// (prepare): from then on it has a PID to report.
	made bool
	// stdinClosed is set by a CloseIO that came before the stdio was
	// recorded; prepare carries it out.
	stdinClosed bool
	status      uint32
	exitedAt    time.Time
}

func newProc(id string, paths stdioPaths, spec *specs.Process) *proc {
	return &proc{id: id, paths: paths, spec: spec, done: make(chan struct{})}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// sandboxProcess returns the sandbox's process, nil for an exec not
// started (and for a process of a unit test).
func (p *proc) sandboxProcess() *sandbox.Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sp
}

// prepare records the sandbox's process and its stdio: at create for the
// init process, at start for an exec.
func (p *proc) prepare(sp *sandbox.Process, pio *processIO) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sp, p.pid, p.io, p.made = sp, sp.Pid(), pio, true
	if p.stdinClosed {
		go pio.closeStdin()
	}
}

// closeStdin ends the process's stdin (CloseIO), or has prepare do it.
func (p *proc) closeStdin() {
	p.mu.Lock()
	pio := p.io
	if pio == nil {
		p.stdinClosed = true
	}
	p.mu.Unlock()
	pio.closeStdin()
}

// prepared reports whether the host created the process (prepare ran).
func (p *proc) prepared() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.made
}

func (p *proc) markRunning() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.run = true
}

func (p *proc) isRunning() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.run
}

// closeIO closes the stdio of a process that will not run or has ended.
func (p *proc) closeIO(ctx context.Context) {
	p.mu.Lock()
	pio := p.io
	p.mu.Unlock()
	pio.Close(ctx)
}

func (p *proc) getPid() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// exit returns the status and time of an exited process.
func (p *proc) exit() (uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.exitedAt
}

// finish records the exit once; later calls do nothing.
func (p *proc) finish(status uint32, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}
	p.status, p.exitedAt = status, at
	close(p.done)
}

// status is the task API's view of the process.
func (p *proc) taskStatus() task.Status {
	switch {
	case p.exited():
		return task.Status_STOPPED
	case !p.isRunning():
		return task.Status_CREATED
	}
	return task.Status_RUNNING
}

// wait blocks until the process has exited or ctx ends.
func (p *proc) wait(ctx context.Context) (uint32, time.Time, error) {
	select {
	case <-p.done:
		s, at := p.exit()
		return s, at, nil
	case <-ctx.Done():
		return 0, time.Time{}, ctx.Err()
	}
}

// watch waits for a started process to exit (for the life of the shim),
// closes its stdio so that containerd's readers see the end of the output,
// records the status and publishes TaskExit.
func (s *service) watch(c *container, p *proc) {
	sp := p.sandboxProcess()
	st, err := sp.Wait(s.bg)
	status, at := uint32(st.Code), st.At
	if err != nil {
		log.G(s.bg).WithError(err).WithField("container", c.id).WithField("exec", p.id).
			Warnf("lost the process; reporting exit status %d", vmLostStatus)
		status, at = vmLostStatus, time.Now()
	}
	p.closeIO(s.bg)
	p.finish(status, at)
	id := p.id
	if id == "" {
		id = c.id
	}
	s.events.publish(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          id,
		Pid:         s.hostPid(),
		ExitStatus:  status,
		ExitedAt:    timestamppb.New(at),
	})
	if err == nil && st.Declared && p.id == "" && s.vmOrphaned(c) {
		// The guest ignores a SIGKILL, or lies about it: stop its VM
		// rather than leave it running with nothing the host still
		// counts on in it. The pod's delete and the shim's shutdown
		// then complete whatever the guest does.
		log.G(s.bg).WithField("container", c.id).WithField("role", c.role.String()).
			Warn("the guest did not report a killed container's exit; stopping the VM")
		s.stopSandbox(s.bg)
	}
}

// vmOrphaned reports whether the VM has nothing left to run once the
// container c's init process is gone: c is the pod's sandbox container, or
// no other container of the shim has a process whose exit is not known.
func (s *service) vmOrphaned(c *container) bool {
	if c.role == rolePodSandbox {
		return true
	}
	s.mu.Lock()
	others := make([]*container, 0, len(s.containers))
	for _, o := range s.containers {
		if o != nil && o != c {
			others = append(others, o)
		}
	}
	s.mu.Unlock()
	for _, o := range others {
		if !o.init.exited() {
			return false
		}
	}
	return true
}

// proc finds a task's process: the init process for an empty execID.
func (c *container) proc(execID string) (*proc, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("process %s of container %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// running returns the sandbox process to act on, or an error that says why
// there is none.
func (p *proc) running(what string) (*sandbox.Process, error) {
	if p.exited() {
		return nil, fmt.Errorf("%s: process already finished: %w", what, errdefs.ErrNotFound)
	}
	sp := p.sandboxProcess()
	if sp == nil {
		return nil, fmt.Errorf("%s: process not started: %w", what, errdefs.ErrFailedPrecondition)
	}
	return sp, nil
}
