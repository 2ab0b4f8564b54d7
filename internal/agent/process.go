package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/utils"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// execOutputGrace bounds how long the output of an exec process may go on
// after the process exited: a background child that inherited its stdout
// would otherwise hold WaitProcess forever. The init process has no such
// bound: when it exits the kernel kills the rest of its PID namespace.
const execOutputGrace = 10 * time.Second

// pipeSize is the capacity asked for the stdio pipes (the default maximum
// of fs.pipe-max-size); a larger pipe means fewer wakeups per megabyte.
const pipeSize = 1 << 20

// process is one process of a container: the init process or an exec.
type process struct {
	cid    string
	execID string // empty for the init process
	proc   procHandle
	pid    int
	io     *procIO
	// onExit, when set, runs once the process has exited, before its
	// output is awaited.
	onExit func()

	// exited is closed when the process has exited; done when, in
	// addition, its output has reached the host and the stdio channels
	// are closed. status and exitedAt are set before exited is closed.
	exited   chan struct{}
	done     chan struct{}
	status   int32
	exitedAt time.Time
}

// procHandle is what the agent does with a started process: libcontainer's
// process of a container, or a pod sandbox's (podsandbox.go).
type procHandle interface {
	Signal(os.Signal) error
	Wait() (*os.ProcessState, error)
}

// waitStatus maps a wait status to the exit status runc reports: the exit
// code, or 128 plus the signal number when a signal ended the process.
func waitStatus(ws unix.WaitStatus) int32 {
	switch {
	case ws.Exited():
		return int32(ws.ExitStatus())
	case ws.Signaled():
		return 128 + int32(ws.Signal())
	}
	return 255
}

// exitStatus is waitStatus of what libcontainer.Process.Wait returned.
func exitStatus(ps *os.ProcessState) (int32, bool) {
	if ps == nil {
		return 255, false
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok {
		return int32(ps.ExitCode()), true
	}
	return waitStatus(unix.WaitStatus(ws)), true
}

// wait blocks until the process has exited and its output is
// delivered, or ctx is done.
func (p *process) wait(ctx context.Context) (*api.WaitProcessResponse, error) {
	select {
	case <-p.done:
		return &api.WaitProcessResponse{ExitStatus: p.status, ExitedAt: timestampOf(p.exitedAt)}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// signal sends sig to the process unless it has exited.
func (p *process) signal(sig unix.Signal) error {
	if p.hasExited() {
		return fmt.Errorf("process %d has exited: %w", p.pid, errdefs.ErrNotFound)
	}
	if err := p.proc.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) || errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("process %d has exited: %w", p.pid, errdefs.ErrNotFound)
		}
		return fmt.Errorf("signalling process %d: %w", p.pid, err)
	}
	return nil
}

// monitor waits for the process, gives its pid back to the reaper, waits
// for its output and records the status. It runs once per process, in its
// own goroutine.
func (p *process) monitor(ctx context.Context, r *reaper) {
	ps, err := p.proc.Wait()
	r.release(p.pid)
	st, ok := exitStatus(ps)
	if !ok {
		log.G(ctx).WithError(err).WithField("pid", p.pid).Warn("no exit status for process")
	}
	p.status, p.exitedAt = st, time.Now()
	close(p.exited)
	if p.onExit != nil {
		p.onExit()
	}
	grace := time.Duration(0)
	if p.execID != "" {
		grace = execOutputGrace
	}
	p.io.finish(ctx, grace)
	log.G(ctx).WithFields(log.Fields{"container": p.cid, "exec": p.execID, "pid": p.pid, "status": st}).Debug("process exited")
	close(p.done)
}

// procIO is the stdio of one process: the host channels it claimed, the
// pipes or the pty between them and the process, and the copies.
type procIO struct {
	stdio *api.Stdio

	// conns are the claimed channels, all closed by finish or abort.
	conns []net.Conn
	// childFiles are the process's ends, closed in the agent after start.
	childFiles []*os.File
	// outputs are the agent's ends of stdout/stderr (or the pty master),
	// each with the channel it is copied to.
	outputs []output
	// stdinConn feeds stdin, nil without.
	stdinConn net.Conn
	// stdinPipe is the agent's end of the stdin pipe, nil without.
	stdinPipe *os.File

	// consoleSock receives the pty master when a terminal is asked.
	consoleSock *os.File

	mu sync.Mutex
	// stdin closes the process's input once. Guarded by mu.
	stdin io.Closer
	// console is the pty master; nil after a hangup. Guarded by mu.
	console *os.File
	// hungUp is set once hangup closed the terminal. Guarded by mu.
	hungUp bool
	// exited is closed when the process has exited.
	exited <-chan struct{}

	copies sync.WaitGroup
}

type output struct {
	src *os.File
	dst net.Conn
}

// newProcIO claims the channels stdio names and prepares lp's stdio: pipes,
// or a console socket for a pty. On error nothing is left open.
func newProcIO(ctx context.Context, streams *streamTable, stdio *api.Stdio, lp *libcontainer.Process) (_ *procIO, retErr error) {
	if stdio == nil {
		stdio = &api.Stdio{}
	}
	if stdio.GetTerminal() && stdio.GetStderr() != 0 {
		return nil, fmt.Errorf("stdio: a terminal has no separate stderr stream: %w", errdefs.ErrInvalidArgument)
	}
	pio := &procIO{stdio: stdio}
	defer func() {
		if retErr != nil {
			pio.abort()
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, streamClaimWait)
	defer cancel()
	claim := func(id uint64) (net.Conn, error) {
		if id == 0 {
			return nil, nil
		}
		c, err := streams.claim(cctx, id, streamClaimWait)
		if err != nil {
			return nil, err
		}
		pio.conns = append(pio.conns, c)
		return c, nil
	}
	in, err := claim(stdio.GetStdin())
	if err != nil {
		return nil, err
	}
	out, err := claim(stdio.GetStdout())
	if err != nil {
		return nil, err
	}
	errc, err := claim(stdio.GetStderr())
	if err != nil {
		return nil, err
	}
	pio.stdinConn = in

	if stdio.GetTerminal() {
		parent, child, err := utils.NewSockPair("console")
		if err != nil {
			return nil, fmt.Errorf("creating console socket: %w", err)
		}
		pio.consoleSock = parent
		pio.childFiles = append(pio.childFiles, child)
		lp.ConsoleSocket = child
		lp.ConsoleWidth, lp.ConsoleHeight = uint16(stdio.GetWidth()), uint16(stdio.GetHeight())
		if out != nil {
			pio.outputs = append(pio.outputs, output{dst: out}) // src: the master, after start
		}
		return pio, nil
	}
	if in != nil {
		r, w, err := pipe()
		if err != nil {
			return nil, err
		}
		pio.childFiles = append(pio.childFiles, r)
		pio.stdinPipe = w
		pio.stdin = w
		lp.Stdin = r
	}
	for _, o := range []struct {
		conn net.Conn
		set  func(*os.File)
	}{
		{out, func(f *os.File) { lp.Stdout = f }},
		{errc, func(f *os.File) { lp.Stderr = f }},
	} {
		if o.conn == nil {
			continue
		}
		r, w, err := pipe()
		if err != nil {
			return nil, err
		}
		pio.childFiles = append(pio.childFiles, w)
		pio.outputs = append(pio.outputs, output{src: r, dst: o.conn})
		o.set(w)
	}
	return pio, nil
}

// pipe makes a pipe with a large buffer.
func pipe() (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("creating pipe: %w", err)
	}
	_, _ = unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, pipeSize)
	return r, w, nil
}

// started closes the process's ends in the agent, receives the pty master
// and starts the copies; exited is closed when the process has exited.
// After it, finish must run.
func (pio *procIO) started(ctx context.Context, exited <-chan struct{}) error {
	pio.exited = exited
	for _, f := range pio.childFiles {
		_ = f.Close()
	}
	pio.childFiles = nil
	if pio.consoleSock != nil {
		master, err := recvConsole(pio.consoleSock, streamClaimWait)
		_ = pio.consoleSock.Close()
		pio.consoleSock = nil
		if err != nil {
			return err
		}
		pio.mu.Lock()
		pio.console = master
		pio.mu.Unlock()
		for i := range pio.outputs {
			pio.outputs[i].src = master
		}
	}
	for _, o := range pio.outputs {
		pio.copies.Add(1)
		go func() {
			defer pio.copies.Done()
			n, err := copyOut(o.dst, o.src)
			if err != nil {
				log.G(ctx).WithError(err).Debug("copying process output")
			}
			log.G(ctx).WithField("bytes", n).Trace("process output ended")
		}()
	}
	if pio.stdinConn != nil {
		var dst io.WriteCloser
		if pio.console != nil {
			dst = hangupCloser{Writer: pio.console, pio: pio}
		} else {
			dst = &onceCloser{Writer: pio.stdinPipe, c: pio.stdinPipe}
			pio.mu.Lock()
			pio.stdin = dst
			pio.mu.Unlock()
		}
		go func() {
			if _, err := copyIn(dst, pio.stdinConn); err != nil && !isReadEnd(err) {
				log.G(ctx).WithError(err).Debug("copying process input")
			}
		}()
	}
	return nil
}

// hangupCloser is the input of a process with a terminal: closing it hangs
// the terminal up.
type hangupCloser struct {
	io.Writer
	pio *procIO
}

func (h hangupCloser) Close() error { return h.pio.hangup() }

// hangup hangs up the terminal of a process whose input stream has ended
// or failed, as containerd's runc shim does when its stdin copy ends: it
// closes the pty master. The process then reads end of file from the
// terminal, and the kernel sends SIGHUP to the terminal's session (which
// the init of a PID namespace without a handler for it does not get). Lost
// with the master: output not yet copied to the host, input the process
// has not read yet, and whatever it writes later. A process seen to have
// exited keeps its terminal so that the rest of its output reaches the
// host; one that exits just as the check is made may lose its last output.
func (pio *procIO) hangup() error {
	select {
	case <-pio.exited:
		return nil
	default:
	}
	pio.mu.Lock()
	m := pio.console
	pio.console, pio.hungUp = nil, m != nil
	pio.mu.Unlock()
	if m == nil {
		return nil
	}
	if err := m.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("hanging up the terminal: %w", err)
	}
	return nil
}

// recvConsole receives the pty master that the container's init sends on
// the console socket, and makes it non-blocking so that Close interrupts a
// read in progress.
func recvConsole(sock *os.File, limit time.Duration) (*os.File, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		fd, err := recvFD(sock)
		ch <- res{fd, err}
	}()
	var r res
	select {
	case r = <-ch:
	case <-time.After(limit):
		_ = sock.Close()
		return nil, fmt.Errorf("the container did not send its terminal within %s: %w", limit, context.DeadlineExceeded)
	}
	if r.err != nil {
		return nil, fmt.Errorf("receiving the terminal: %w", r.err)
	}
	if err := unix.SetNonblock(r.fd, true); err != nil {
		_ = unix.Close(r.fd)
		return nil, fmt.Errorf("receiving the terminal: %w", err)
	}
	return os.NewFile(uintptr(r.fd), "pty-master"), nil
}

// recvFD receives the one file descriptor a message on the unix socket sock
// carries (SCM_RIGHTS), close-on-exec. The message's data (libcontainer
// sends the terminal's name) is dropped. A message with no descriptor or
// with more than one is an error; extra descriptors are closed.
func recvFD(sock *os.File) (int, error) {
	rc, err := sock.SyscallConn()
	if err != nil {
		return -1, err
	}
	data := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4)) // room to see (and close) extras
	var oobn int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		_, oobn, _, _, rerr = unix.Recvmsg(int(fd), data, oob, unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return -1, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return -1, err
	}
	var fds []int
	for i := range msgs {
		if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return -1, fmt.Errorf("want one file descriptor in the message, got %d", len(fds))
	}
	return fds[0], nil
}

// closeStdin closes the process's input pipe. With a terminal the input
// ends when the host closes its stream (see hangup); the call is a no-op.
func (pio *procIO) closeStdin() error {
	pio.mu.Lock()
	c := pio.stdin
	pio.mu.Unlock()
	if c == nil {
		return nil
	}
	if err := c.Close(); err != nil && !errors.Is(err, errClosedTwice) {
		return err
	}
	return nil
}

// resize sets the terminal's window size.
func (pio *procIO) resize(width, height uint32) error {
	pio.mu.Lock()
	m, hungUp := pio.console, pio.hungUp
	pio.mu.Unlock()
	if hungUp {
		return nil // the terminal is gone; a size has no one to reach
	}
	if m == nil {
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	rc, err := m.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(height), Col: uint16(width)})
	}); err != nil {
		return fmt.Errorf("resizing terminal: %w", err)
	}
	if ierr != nil {
		return fmt.Errorf("resizing terminal: %w", ierr)
	}
	return nil
}

// finish waits for the output copies to end (at most grace when grace is
// positive), then closes everything.
func (pio *procIO) finish(ctx context.Context, grace time.Duration) {
	done := make(chan struct{})
	go func() { pio.copies.Wait(); close(done) }()
	if grace > 0 {
		select {
		case <-done:
		case <-time.After(grace):
			log.G(ctx).WithField("grace", grace).Info("output still open after the process exited (a child holds it?); closing it")
			for _, o := range pio.outputs {
				if o.src != nil {
					_ = o.src.Close()
				}
			}
		}
	}
	<-done
	pio.abort()
}

// abort closes everything the procIO holds.
func (pio *procIO) abort() {
	for _, f := range pio.childFiles {
		_ = f.Close()
	}
	pio.childFiles = nil
	if pio.consoleSock != nil {
		_ = pio.consoleSock.Close()
	}
	for _, o := range pio.outputs {
		if o.src != nil {
			_ = o.src.Close()
		}
	}
	if pio.stdinPipe != nil {
		_ = pio.stdinPipe.Close()
	}
	for _, c := range pio.conns {
		_ = c.Close()
	}
}

func isEIO(err error) bool { return errors.Is(err, unix.EIO) }
