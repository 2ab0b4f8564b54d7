package shim

import (
	"context"
	"fmt"
	"syscall"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hull-runtime/hull/internal/sandbox"
)

// State reports a container's or an exec's status.
func (s *service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	c, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	status := p.taskStatus()
	if r.ExecID == "" && status == task.Status_RUNNING && c.c.State() == sandbox.ContainerPaused {
		status = task.Status_PAUSED
	}
	resp := &taskapi.StateResponse{
		ID:       r.ID,
		ExecID:   r.ExecID,
		Bundle:   c.bundle,
		Pid:      s.pidOf(p),
		Status:   status,
		Stdin:    p.paths.stdin,
		Stdout:   p.paths.stdout,
		Stderr:   p.paths.stderr,
		Terminal: p.paths.terminal,
	}
	if p.exited() {
		code, at := p.exit()
		resp.ExitStatus, resp.ExitedAt = code, timestamppb.New(at)
	}
	return resp, nil
}

// Exec adds a process to a container; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Spec == nil {
		return nil, fmt.Errorf("exec %s: no process spec: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	spec, err := decodeAny[specs.Process](r.Spec, "exec "+r.ExecID+": the process spec")
	if err != nil {
		return nil, err
	}
	spec.Terminal = r.Terminal
	c.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok || r.ExecID == "" {
		c.mu.Unlock()
		return nil, fmt.Errorf("exec %q of container %s: %w", r.ExecID, c.id, errdefs.ErrAlreadyExists)
	}
	c.execs[r.ExecID] = newProc(r.ExecID, stdioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}, spec)
	c.mu.Unlock()
	s.events.publish(&eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// Kill signals a process, or with All every process of the container.
func (s *service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sp, err := p.running(fmt.Sprintf("killing %s", r.ID))
	if err != nil {
		return nil, err
	}
	if err := sp.Signal(ctx, syscall.Signal(r.Signal), r.All); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// ResizePty sets the size of a process's terminal.
func (s *service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sp, err := p.running("resizing the terminal")
	if err != nil {
		return nil, err
	}
	if err := sp.ResizeTTY(ctx, r.Width, r.Height); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// CloseIO ends a process's stdin once the input already in the FIFO has
// been taken (processIO.closeStdin). Before the process's stdio is
// recorded, the request is kept for prepare: ctr asks as soon as it has
// written its input, which may be while the guest still creates the
// process.
func (s *service) CloseIO(_ context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.closeStdin()
	}
	return &emptypb.Empty{}, nil
}

// Pids lists a container's processes by their PIDs in the guest: unlike
// every other PID the shim reports, these name no host process (pids.go).
func (s *service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := c.c.Pids(ctx)
	if err != nil {
		return nil, err
	}
	// An exec's process carries its exec ID, as runc's shim reports it
	// (ctr task ps shows it).
	execOf := map[uint32]string{}
	c.mu.Lock()
	for id, p := range c.execs {
		if pid := p.getPid(); pid > 0 {
			execOf[pid] = id
		}
	}
	c.mu.Unlock()
	resp := &taskapi.PidsResponse{}
	for _, pid := range pids {
		info := &task.ProcessInfo{Pid: pid}
		if id, ok := execOf[pid]; ok {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: id})
			if err != nil {
				return nil, fmt.Errorf("process %d of exec %s: %w", pid, id, err)
			}
			info.Info = a
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

// Pause freezes a container.
func (s *service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if err := c.c.Pause(ctx); err != nil {
		return nil, err
	}
	s.events.publish(&eventstypes.TaskPaused{ContainerID: c.id})
	return &emptypb.Empty{}, nil
}

// Resume thaws a paused container.
func (s *service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if err := c.c.Resume(ctx); err != nil {
		return nil, err
	}
	s.events.publish(&eventstypes.TaskResumed{ContainerID: c.id})
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported: a VM's containers are not checkpointed
// with CRIU from the host.
func (s *service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, fmt.Errorf("checkpointing container %s: hull does not support checkpoints: %w", r.ID, errdefs.ErrNotImplemented)
}

// Update changes a container's resource limits.
func (s *service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Resources == nil {
		return nil, fmt.Errorf("updating container %s: no resources: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	res, err := decodeAny[specs.LinuxResources](r.Resources, "updating container "+r.ID+": the resources")
	if err != nil {
		return nil, err
	}
	if err := c.c.Update(ctx, res); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Wait returns a process's exit status once it has exited.
func (s *service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	code, at, err := p.wait(ctx)
	if err != nil {
		return nil, err
	}
	return &taskapi.WaitResponse{ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// Stats returns a container's cgroup v2 metrics. For the sandbox container
// (a CRI pod's pause container; the only container of a `ctr run`) they
// are the host side of the pod: the usage of the sandbox's host cgroup,
// which holds QEMU (the whole guest's memory with it) and virtiofsd. For
// the other containers they are the container's cgroup in the guest.
func (s *service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	sb, isSandbox := s.sb, r.ID == s.sandboxID
	s.mu.Unlock()
	if isSandbox && sb != nil && sb.CgroupPath() != "" {
		u, err := sb.HostUsage()
		if err != nil {
			return nil, err
		}
		a, err := typeurl.MarshalAnyToProto(hostMetrics(u))
		if err != nil {
			return nil, err
		}
		return &taskapi.StatsResponse{Stats: a}, nil
	}
	if c.init.exited() {
		// Its cgroup in the guest is gone or going.
		return nil, fmt.Errorf("container %s has exited: no statistics: %w", r.ID, errdefs.ErrNotFound)
	}
	st, err := c.c.Stats(ctx)
	if err != nil {
		return nil, err
	}
	a, err := typeurl.MarshalAnyToProto(metrics(st))
	if err != nil {
		return nil, err
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// decodeAny decodes a typeurl Any that must hold a *T; what names it in
// errors. Anything else is an invalid argument.
func decodeAny[T any](a *anypb.Any, what string) (*T, error) {
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil, fmt.Errorf("%s: decoding: %w: %w", what, err, errdefs.ErrInvalidArgument)
	}
	t, ok := v.(*T)
	if !ok {
		return nil, fmt.Errorf("%s is a %s, not a %T: %w", what, a.GetTypeUrl(), t, errdefs.ErrInvalidArgument)
	}
	return t, nil
}
