package ociruntime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/ocispec"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// teardownTimeout bounds the release of the container and its VM.
const teardownTimeout = time.Minute

// lostStatus is the exit status of a workload whose VM died under it.
const lostStatus = 255

// supervisor owns a container's sandbox for the container's life; see the
// package documentation.
type supervisor struct {
	id, dir string
	rec     record
	// bg is the supervisor's process-lifetime context (its logger).
	bg context.Context
	// terminal is set when the init process has a terminal: the
	// supervisor's stdin is then the host end of it.
	terminal bool

	sb  *sandbox.Sandbox
	ctr *sandbox.Container

	// done receives the status to exit with, once (finish).
	done     chan int
	doneOnce sync.Once
	// startMu serializes start and delete.
	startMu sync.Mutex
}

// supervise is the supervisor's main: it waits for create's go-ahead on
// the control connection (descriptor 3), boots the sandbox and creates the
// container, serves the socket until the workload exits or the container
// is deleted, tears everything down and returns the workload's status.
func supervise(ctx context.Context, root, id string) int {
	logger := log.G(ctx).WithField("container", id)
	ctx = log.WithLogger(ctx, logger)
	ctl, err := fileConn(os.NewFile(3, "control"))
	if err != nil {
		logger.WithError(err).Error("supervisor: no control connection")
		return 1
	}
	// Signals are the workload's; a broken output pipe must not end the
	// supervisor.
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)

	var boot request
	if _, err := recv(ctl, &boot); err != nil || boot.Op != opBoot {
		// create gave up (a hook failed): nothing was made.
		return 1
	}
	dir, rec, err := readRecord(root, id)
	if err != nil {
		_ = send(ctl, response{Error: toWire(err)})
		return 1
	}
	s := &supervisor{id: id, dir: dir, rec: rec, bg: ctx, done: make(chan int, 1)}
	l, err := s.boot(ctx)
	if err != nil {
		_ = send(ctl, response{Error: toWire(err)})
		return 1
	}
	if err := send(ctl, response{}); err != nil {
		logger.WithError(err).Warn("supervisor: create did not take the answer")
	}
	_ = ctl.Close()
	go s.serve(l)

	var code int
loop:
	for {
		select {
		case code = <-s.done:
			break loop
		case sig := <-sigs:
			s.forward(sig.(syscall.Signal))
		}
	}
	signal.Stop(sigs)
	_ = l.Close()
	s.teardown()
	return code
}

// boot starts the sandbox and creates the container in it; on error it
// leaves nothing.
func (s *supervisor) boot(ctx context.Context) (_ *net.UnixListener, retErr error) {
	spec, err := ocispec.ReadSpec(s.rec.Bundle)
	if err != nil {
		return nil, err
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("%s/config.json has no process: %w", s.rec.Bundle, errdefs.ErrInvalidArgument)
	}
	if _, err := ocispec.SplitHooks(spec); err != nil {
		return nil, err
	}
	plan, err := planNetwork(spec)
	if err != nil {
		return nil, err
	}
	cfg, err := config.Load(s.rec.HullConfig)
	if err != nil {
		return nil, fmt.Errorf("loading hull configuration: %w", err)
	}
	sc, err := launch.SandboxConfig(cfg, s.rec.SandboxID)
	if err != nil {
		return nil, err
	}
	if spec.Hostname != "" {
		sc.Hostname = spec.Hostname
	}
	if spec.Linux != nil && spec.Linux.CgroupsPath != "" {
		if sc.Cgroup.Path, err = hostcgroup.Resolve(spec.Linux.CgroupsPath, "", ""); err != nil {
			return nil, err
		}
	}
	switch {
	case plan.path != "":
		sc.NetNS = plan.path
	case plan.own:
		// create made the supervisor in a namespace of its own, which
		// the hooks filled.
		sc.NetNS, sc.NetNSOwn = fmt.Sprintf("/proc/%d/ns/net", os.Getpid()), true
	}
	sb, err := sandbox.Start(ctx, sc)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
			defer cancel()
			if err := sb.Stop(tctx); err != nil {
				log.G(ctx).WithError(err).Warn("stopping the sandbox of a failed create")
			}
		}
	}()
	s.terminal = spec.Process.Terminal
	pio := sandbox.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Terminal: s.terminal}
	if s.terminal {
		pio.Stderr = nil
		pio.Width, pio.Height, _ = terminalSize(os.Stdin)
	}
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: s.id, Bundle: s.rec.Bundle, Spec: spec, Stdio: pio})
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(s.dir, sockName)
	_ = os.Remove(sock)
	l, err := listen(sock)
	if err != nil {
		_ = ctr.Delete(ctx, true)
		return nil, fmt.Errorf("listening on %s: %w", sock, err)
	}
	s.sb, s.ctr = sb, ctr
	return l, nil
}

// netPlan is what a spec's network namespace asks of the VM.
type netPlan struct {
	// path is a namespace to mirror that the container manager made.
	path string
	// own is set when the spec asks for a new namespace: the
	// supervisor's own, made for it by create.
	own bool
}

// planNetwork takes the network namespace out of the spec (the container
// uses the guest's namespace, which holds the mirrored network) and says
// where the network comes from. A namespace of another kind that names a
// path cannot be joined from a VM.
func planNetwork(spec *specs.Spec) (netPlan, error) {
	var plan netPlan
	if spec.Linux == nil {
		return plan, nil
	}
	kept := spec.Linux.Namespaces[:0:0]
	for _, ns := range spec.Linux.Namespaces {
		switch {
		case ns.Type == specs.NetworkNamespace:
			plan.path, plan.own = ns.Path, ns.Path == ""
			continue
		case ns.Path != "":
			return netPlan{}, fmt.Errorf("%s namespace %q: a container in a VM cannot join a host namespace: %w", ns.Type, ns.Path, errdefs.ErrNotImplemented)
		}
		kept = append(kept, ns)
	}
	spec.Linux.Namespaces = kept
	return plan, nil
}

// serve answers the socket until it is closed.
func (s *supervisor) serve(l *net.UnixListener) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *supervisor) handle(c *net.UnixConn) {
	defer func() { _ = c.Close() }()
	var req request
	files, err := recv(c, &req)
	if err != nil {
		return
	}
	ctx := s.bg
	if req.Op == opExec {
		s.exec(ctx, c, req, files)
		return
	}
	for _, f := range files {
		_ = f.Close()
	}
	var resp response
	switch req.Op {
	case opState:
		resp.Status = s.status()
	case opStart:
		err = s.start(ctx)
	case opKill:
		err = s.ctr.Signal(ctx, syscall.Signal(req.Signal), req.All)
	case opDelete:
		err = s.delete(ctx, req.Force)
	case opPids:
		resp.Pids, err = s.ctr.Pids(ctx)
	case opPause:
		err = s.ctr.Pause(ctx)
	case opResume:
		err = s.ctr.Resume(ctx)
	case opUpdate:
		err = s.ctr.Update(ctx, req.Resources)
	case opStats:
		var st *agent.StatsResponse
		if st, err = s.ctr.Stats(ctx); err == nil {
			resp.Stats = runcStats(st)
		}
	default:
		err = fmt.Errorf("unknown operation %q: %w", req.Op, errdefs.ErrNotImplemented)
	}
	resp.Error = toWire(err)
	_ = send(c, resp)
}

func (s *supervisor) status() string {
	switch s.ctr.State() {
	case sandbox.ContainerCreated:
		return statusCreated
	case sandbox.ContainerRunning:
		return statusRunning
	case sandbox.ContainerPaused:
		return statusPaused
	}
	return statusStopped
}

// start runs the workload and has the supervisor exit with its status.
func (s *supervisor) start(ctx context.Context) error {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if err := s.ctr.Start(ctx); err != nil {
		return err
	}
	go func() {
		st, err := s.ctr.Wait(s.bg)
		code := st.Code
		if err != nil {
			log.G(s.bg).WithError(err).Warn("lost the workload")
			code = lostStatus
		}
		s.finish(code)
	}()
	return nil
}

// delete ends the container: one that never started, or with force one
// that runs (SIGKILL, as runc).
func (s *supervisor) delete(ctx context.Context, force bool) error {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	switch st := s.ctr.State(); st {
	case sandbox.ContainerRunning, sandbox.ContainerPaused:
		if !force {
			return fmt.Errorf("cannot delete container %s that is not stopped: %s: %w", s.id, st, errdefs.ErrFailedPrecondition)
		}
		if err := s.ctr.Signal(ctx, syscall.SIGKILL, true); err != nil {
			log.G(ctx).WithError(err).Warn("killing the workload for a forced delete")
		}
	}
	s.finish(sandbox.KilledStatus)
	return nil
}

func (s *supervisor) finish(code int) {
	s.doneOnce.Do(func() { s.done <- code })
}

// forward passes a signal the supervisor received to the workload; a
// resize of the host terminal resizes the guest's.
func (s *supervisor) forward(sig syscall.Signal) {
	switch sig {
	case syscall.SIGCHLD, syscall.SIGURG, syscall.SIGPIPE:
		return
	case syscall.SIGWINCH:
		if !s.terminal {
			return
		}
		if w, h, ok := terminalSize(os.Stdin); ok {
			if err := s.ctr.ResizeTTY(s.bg, w, h); err != nil {
				log.G(s.bg).WithError(err).Debug("resizing the terminal")
			}
		}
		return
	}
	if err := s.ctr.Signal(s.bg, sig, false); err != nil {
		log.G(s.bg).WithError(err).Debugf("forwarding %s", sig)
	}
}

// teardown removes the container and stops the sandbox.
func (s *supervisor) teardown() {
	ctx, cancel := context.WithTimeout(s.bg, teardownTimeout)
	defer cancel()
	if err := s.ctr.Delete(ctx, true); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Warn("deleting the container")
	}
	if err := s.sb.Stop(ctx); err != nil {
		log.G(ctx).WithError(err).Error("stopping the sandbox")
	}
	_ = os.Remove(filepath.Join(s.dir, sockName))
}

// exec runs a process in the container with the stdio that came with the
// request, answers once it runs, takes its stand-in's signals and resizes,
// and sends its exit status. A stand-in that goes away kills the process.
func (s *supervisor) exec(ctx context.Context, c *net.UnixConn, req request, files []*os.File) {
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	p, err := s.startExec(ctx, req, files)
	if err != nil {
		_ = send(c, response{Error: toWire(err)})
		return
	}
	if err := send(c, response{}); err != nil {
		_ = p.Signal(ctx, syscall.SIGKILL, false)
	}
	go func() {
		for {
			var r request
			if _, err := recv(c, &r); err != nil {
				if p.State() != sandbox.ProcessExited {
					_ = p.Signal(ctx, syscall.SIGKILL, false)
				}
				return
			}
			switch r.Op {
			case opSignal:
				err = p.Signal(ctx, syscall.Signal(r.Signal), false)
			case opResize:
				err = p.ResizeTTY(ctx, r.Width, r.Height)
			}
			if err != nil {
				log.G(ctx).WithError(err).Debugf("exec %s", r.Op)
			}
		}
	}()
	st, err := p.Wait(ctx)
	code := st.Code
	if err != nil {
		code = lostStatus
	}
	_ = send(c, response{Exit: &code})
}

func (s *supervisor) startExec(ctx context.Context, req request, files []*os.File) (*sandbox.Process, error) {
	if req.Process == nil {
		return nil, fmt.Errorf("exec: no process: %w", errdefs.ErrInvalidArgument)
	}
	var pio sandbox.IO
	switch {
	case req.Process.Terminal && len(files) == 1:
		pio = sandbox.IO{Stdin: files[0], Stdout: files[0], Terminal: true}
		pio.Width, pio.Height, _ = terminalSize(files[0])
	case !req.Process.Terminal && len(files) == 3:
		pio = sandbox.IO{Stdin: files[0], Stdout: files[1], Stderr: files[2]}
	default:
		return nil, fmt.Errorf("exec: %d descriptors for terminal=%t: %w", len(files), req.Process.Terminal, errdefs.ErrInvalidArgument)
	}
	execID, err := randomExecID()
	if err != nil {
		return nil, err
	}
	return s.ctr.Exec(ctx, execID, req.Process, pio)
}

func randomExecID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "exec-" + hex.EncodeToString(b[:]), nil
}

// fileConn turns an inherited socket descriptor into a connection.
func fileConn(f *os.File) (*net.UnixConn, error) {
	defer func() { _ = f.Close() }()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, errors.New("not a unix socket")
	}
	return uc, nil
}
