package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// Limits of a debug console's lifetime.
const (
	// consoleKillDelay is how long a debug shell has to go after its host
	// went away and the terminal was hung up; then its session is killed.
	consoleKillDelay = 5 * time.Second
	// consoleDrainGrace bounds how long the terminal's output may go on
	// after the shell exited. What the shell wrote before it exited is in
	// the pty's buffer and reaches the host in milliseconds; the bound only
	// matters when a background job still holds the terminal.
	consoleDrainGrace = 2 * time.Second
	// consoleStatusTTL is how long WaitDebugConsole still answers for a
	// console that has ended.
	consoleStatusTTL = 5 * time.Minute
)

// The debug shell's environment; TERM comes from the request.
const (
	consoleDefaultTerm = "vt100"
	consolePath        = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
	consoleHome        = "HOME=/"
	consolePrompt      = "PS1=hull-debug# "
)

// debugConsole is one debug shell (System.DebugConsole): a root shell in
// the guest's own namespaces, on a new terminal whose master the agent
// copies to and from one stdio channel.
//
// Three goroutines serve it: the input copy (channel to master), the
// output copy (master to channel) and supervise, which waits for the shell
// and ends the rest. When the host ends its side of the channel, hangup
// closes the master: the kernel sends SIGHUP to the shell's session, and
// supervise kills the session if the shell is still there consoleKillDelay
// later. When the shell exits first, supervise lets the output drain (at
// most consoleDrainGrace) and closes the channel.
type debugConsole struct {
	pid  int
	conn net.Conn
	// master is the terminal's master side, non-blocking so that Close
	// interrupts the copies. Closed by hangup or supervise; a second Close
	// is harmless.
	master *os.File

	// exited is closed once the shell has been waited for; state is set
	// before.
	exited chan struct{}
	state  *os.ProcessState
	// hungUp is closed once hangup closed the master of a running shell.
	hungUp     chan struct{}
	hangupOnce sync.Once
	// inDone and outDone are closed when the input and output copies end.
	inDone, outDone chan struct{}
}

// consoleSet holds the running debug consoles, so that the agent's
// shutdown can end them.
type consoleSet struct {
	mu sync.Mutex
	// running are the consoles whose supervise has not ended. Guarded by mu.
	running map[*debugConsole]struct{}
	// closed is set by endAll: no console starts after it. Guarded by mu.
	closed bool
	// ended keeps the exit status of consoles that ended less than
	// consoleStatusTTL ago, by shell pid. Guarded by mu.
	ended map[int]endedConsole
	// supervisors counts the running supervise goroutines; Add under mu.
	supervisors sync.WaitGroup
}

// endedConsole is the outcome of a console that has ended.
type endedConsole struct {
	status int32
	at     time.Time
}

func newConsoleSet() *consoleSet {
	return &consoleSet{running: map[*debugConsole]struct{}{}, ended: map[int]endedConsole{}}
}

// add registers c, unless the set was closed.
func (s *consoleSet) add(c *debugConsole) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.running[c] = struct{}{}
	s.supervisors.Add(1)
	return true
}

// remove forgets c, whose shell has exited, and keeps its status for
// wait.
func (s *consoleSet) remove(c *debugConsole) {
	status, _ := exitStatus(c.state)
	now := time.Now()
	s.mu.Lock()
	delete(s.running, c)
	for pid, e := range s.ended {
		if now.Sub(e.at) > consoleStatusTTL {
			delete(s.ended, pid)
		}
	}
	s.ended[c.pid] = endedConsole{status: status, at: now}
	s.mu.Unlock()
	s.supervisors.Done()
}

// findLocked returns the running console whose shell is pid, or nil.
// The caller holds mu.
func (s *consoleSet) findLocked(pid int) *debugConsole {
	for c := range s.running {
		if c.pid == pid {
			return c
		}
	}
	return nil
}

// wait waits until the shell of the console pid has exited, or ctx is
// done, and returns its exit status (runc's: 128 + signal for a signal).
func (s *consoleSet) wait(ctx context.Context, pid int) (int32, error) {
	s.mu.Lock()
	c := s.findLocked(pid)
	e, ended := s.ended[pid]
	s.mu.Unlock()
	switch {
	case c != nil:
		select {
		case <-c.exited:
			status, _ := exitStatus(c.state)
			return status, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	case ended && time.Since(e.at) <= consoleStatusTTL:
		return e.status, nil
	}
	return 0, fmt.Errorf("no debug console with shell pid %d (ended ones are kept %s): %w", pid, consoleStatusTTL, errdefs.ErrNotFound)
}

// endAll refuses new consoles, hangs up the running ones and waits up to
// wait for them to end (each is killed consoleKillDelay after its hangup).
func (s *consoleSet) endAll(ctx context.Context, wait time.Duration) {
	s.mu.Lock()
	s.closed = true
	running := make([]*debugConsole, 0, len(s.running))
	for c := range s.running {
		running = append(running, c)
	}
	s.mu.Unlock()
	if len(running) == 0 {
		return
	}
	log.G(ctx).WithField("consoles", len(running)).Info("hanging up debug consoles")
	for _, c := range running {
		c.hangup()
	}
	if wait <= 0 {
		return
	}
	done := make(chan struct{})
	go func() { s.supervisors.Wait(); close(done) }()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.G(ctx).WithField("wait", wait).Warn("debug consoles still running")
	}
}

// dropStreamWait bounds the wait for a refused call's channel: the host
// opens it before the call, so it is normally there already.
const dropStreamWait = time.Second

// dropStream closes the stdio channel id of a refused call, once it has
// arrived, if it has not been claimed.
func (a *Agent) dropStream(ctx context.Context, id uint64) {
	if conn, err := a.streams.claim(ctx, id, dropStreamWait); err == nil {
		_ = conn.Close()
	}
}

// resize sets the terminal size of the console whose shell is pid.
func (s *consoleSet) resize(pid int, rows, cols uint16) error {
	s.mu.Lock()
	c := s.findLocked(pid)
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("no debug console with shell pid %d: %w", pid, errdefs.ErrNotFound)
	}
	return c.resize(rows, cols)
}

// resize sets the terminal's size; the kernel sends SIGWINCH to its
// foreground job. A console hung up or ended has no terminal to size.
func (c *debugConsole) resize(rows, cols uint16) error {
	select {
	case <-c.hungUp:
		return fmt.Errorf("debug console of pid %d: hung up: %w", c.pid, errdefs.ErrFailedPrecondition)
	case <-c.exited:
		return fmt.Errorf("debug console of pid %d: the shell has exited: %w", c.pid, errdefs.ErrFailedPrecondition)
	default:
	}
	rc, err := c.master.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	// Control holds the descriptor: a master closed meanwhile gives
	// ErrClosed, never an ioctl on a reused descriptor.
	err = rc.Control(func(fd uintptr) {
		serr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("debug console of pid %d: it has ended: %w", c.pid, errdefs.ErrFailedPrecondition)
	}
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("sizing the debug console's terminal: %w", err)
	}
	return nil
}

// startConsole starts a debug shell on the stdio channel req names and
// returns its pid. On error nothing is left: no process, no open file, and
// the channel, once claimed, closed.
func (a *Agent) startConsole(ctx context.Context, req *api.DebugConsoleRequest) (_ int, retErr error) {
	if id := req.GetStreamId(); id != 0 {
		// A refused console closes the channel the host opened for it
		// at once, rather than leaving it parked until its TTL.
		defer func() {
			if retErr != nil {
				a.dropStream(ctx, id)
			}
		}()
	}
	shell := a.debugShell
	if shell == "" {
		return 0, fmt.Errorf("disabled: set debug_console = true in the [agent] section of the hull configuration, "+
			"which boots the VM with hull.debug_console=1: %w", errdefs.ErrFailedPrecondition)
	}
	if req.GetStreamId() == 0 {
		return 0, fmt.Errorf("stream id 0: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetWidth() > math.MaxUint16 || req.GetHeight() > math.MaxUint16 {
		return 0, fmt.Errorf("terminal size %dx%d: too large: %w", req.GetWidth(), req.GetHeight(), errdefs.ErrInvalidArgument)
	}
	if _, err := os.Stat(shell); errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%s does not exist: the guest image was built without a debug shell "+
			"(build it with hull image build --debug-shell): %w", shell, errdefs.ErrFailedPrecondition)
	} else if err != nil {
		return 0, fmt.Errorf("debug shell: %w", err)
	}

	var undo cleanup
	defer func() {
		if retErr != nil {
			undo.run()
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, streamClaimWait)
	conn, err := a.streams.claim(cctx, req.GetStreamId(), streamClaimWait)
	cancel()
	if err != nil {
		return 0, err
	}
	undo.add(func() { _ = conn.Close() })

	var rows, cols uint16
	if req.GetWidth() != 0 && req.GetHeight() != 0 {
		rows, cols = uint16(req.GetHeight()), uint16(req.GetWidth())
	}
	master, slave, err := openPTY(rows, cols)
	if err != nil {
		return 0, err
	}
	undo.add(func() { _ = master.Close() })

	term := req.GetTerm()
	if term == "" {
		term = consoleDefaultTerm
	}
	// argv[0] "sh": a busybox debug shell picks its applet by it. An
	// interactive shell needs no flag: its stdin and stderr are a terminal.
	cmd := &exec.Cmd{
		Path:   shell,
		Args:   []string{"sh"},
		Env:    []string{"TERM=" + term, consoleHome, consolePath, consolePrompt},
		Dir:    "/",
		Stdin:  slave,
		Stdout: slave,
		Stderr: slave,
		// A new session whose controlling terminal is the slave (fd 0 in
		// the child).
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0},
	}
	err = a.reaper.spawn(func() ([]int, error) {
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		return []int{cmd.Process.Pid}, nil
	})
	_ = slave.Close() // the shell has its own copies
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", shell, err)
	}
	pid := cmd.Process.Pid
	c := &debugConsole{
		pid: pid, conn: conn, master: master,
		exited: make(chan struct{}), hungUp: make(chan struct{}),
		inDone: make(chan struct{}), outDone: make(chan struct{}),
	}
	if !a.consoles.add(c) {
		_ = unix.Kill(-pid, unix.SIGKILL)
		_ = cmd.Wait()
		a.reaper.release(pid)
		return 0, fmt.Errorf("the agent is shutting down: %w", errdefs.ErrUnavailable)
	}
	ctx = context.WithoutCancel(ctx)
	log.G(ctx).WithFields(log.Fields{"pid": pid, "stream": req.GetStreamId()}).Info("debug console started")
	go func() {
		defer a.recoverPanic(ctx, "debug console wait")
		_ = cmd.Wait() // an exit status other than 0 is an error; the state has it
		// exited at once: the reaped shell's pid may be reused, and the
		// kill in supervise checks exited first.
		c.state = cmd.ProcessState
		close(c.exited)
		a.reaper.release(pid)
	}()
	go func() {
		defer a.recoverPanic(ctx, "debug console output")
		defer close(c.outDone)
		if _, err := copyOut(c.conn, c.master); err != nil && !errors.Is(err, os.ErrClosed) {
			log.G(ctx).WithError(err).WithField("pid", pid).Debug("copying debug console output")
		}
	}()
	go func() {
		defer a.recoverPanic(ctx, "debug console input")
		defer close(c.inDone)
		bp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bp)
		_, err := io.CopyBuffer(writerOnly{c.master}, readerOnly{c.conn}, *bp)
		var ne net.Error
		if err != nil && !isReadEnd(err) && !errors.Is(err, os.ErrClosed) && (!errors.As(err, &ne) || !ne.Timeout()) {
			log.G(ctx).WithError(err).WithField("pid", pid).Debug("copying debug console input")
		}
		c.hangup()
	}()
	go func() {
		defer a.recoverPanic(ctx, "debug console")
		defer a.consoles.remove(c)
		c.supervise(ctx, a.reaper.proc)
	}()
	return pid, nil
}

// hangup closes the terminal's master unless the shell has exited (its
// remaining output then still drains, see supervise). The kernel sends
// SIGHUP to the session of a terminal whose master is closed; a shell
// exits on it.
func (c *debugConsole) hangup() {
	select {
	case <-c.exited:
		return
	default:
	}
	c.hangupOnce.Do(func() {
		_ = c.master.Close()
		close(c.hungUp)
	})
}

// supervise waits for the shell, killing its session if it outlives a
// hangup by consoleKillDelay, lets the output drain, closes the channel
// and waits for the copies.
func (c *debugConsole) supervise(ctx context.Context, proc string) {
	start := time.Now()
	select {
	case <-c.exited:
	case <-c.hungUp:
		t := time.NewTimer(consoleKillDelay)
		select {
		case <-c.exited:
			t.Stop()
		case <-t.C:
			select {
			case <-c.exited: // waited for meanwhile: its pid may be reused
			default:
				n := killSession(proc, c.pid)
				log.G(ctx).WithFields(log.Fields{"pid": c.pid, "groups": n, "after": consoleKillDelay}).
					Info("debug shell still running after its terminal was hung up; killed its session")
				<-c.exited
			}
		}
	}
	t := time.NewTimer(consoleDrainGrace)
	select {
	case <-c.outDone:
		t.Stop()
	case <-t.C:
		log.G(ctx).WithFields(log.Fields{"pid": c.pid, "grace": consoleDrainGrace}).
			Info("debug console output still open after the shell exited (a background job holds the terminal?); closing it")
		_ = c.master.Close()
		_ = c.conn.SetWriteDeadline(time.Now())
		<-c.outDone
	}
	_ = c.master.Close()
	// Nothing reads the host's input any more: end the input copy now
	// rather than when the host closes its side.
	_ = c.conn.SetReadDeadline(time.Now())
	_ = c.conn.Close()
	<-c.inDone

	status := "unknown"
	if c.state != nil {
		if ws, ok := c.state.Sys().(syscall.WaitStatus); ok {
			status = waitStatusString(unix.WaitStatus(ws))
		}
	}
	log.G(ctx).WithFields(log.Fields{"pid": c.pid, "status": status, "took": time.Since(start)}).Info("debug console ended")
}

// killSession sends SIGKILL to every process group of session sid, found
// in the procfs at proc, and to the group sid itself; it returns how many
// groups it signalled. A session id, like a group id, is not reused while
// a process belongs to it.
func killSession(proc string, sid int) int {
	groups := map[int]bool{sid: true}
	if ents, err := os.ReadDir(proc); err == nil {
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", proc, pid))
			if err != nil {
				continue // gone meanwhile
			}
			if st, err := parseStat(b); err == nil && st.session == sid && st.pgrp > 0 {
				groups[st.pgrp] = true
			}
		}
	}
	for g := range groups {
		_ = unix.Kill(-g, unix.SIGKILL)
	}
	return len(groups)
}

// openPTY allocates a pseudo-terminal of rows x cols (0 leaves the kernel's
// default). The master is non-blocking so that closing it interrupts a copy
// in progress; the slave is for the child. (containerd/console's NewPty
// returns a master that its Fd calls have made blocking.)
func openPTY(rows, cols uint16) (master, slave *os.File, retErr error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening /dev/ptmx: %w", err)
	}
	defer func() {
		if retErr != nil {
			_ = unix.Close(mfd)
		}
	}()
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, fmt.Errorf("unlocking the terminal: %w", err)
	}
	n, err := unix.IoctlGetUint32(mfd, unix.TIOCGPTN)
	if err != nil {
		return nil, nil, fmt.Errorf("naming the terminal: %w", err)
	}
	if rows != 0 && cols != 0 {
		if err := unix.IoctlSetWinsize(mfd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
			return nil, nil, fmt.Errorf("sizing the terminal: %w", err)
		}
	}
	name := "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening %s: %w", name, err)
	}
	return os.NewFile(uintptr(mfd), "/dev/ptmx"), os.NewFile(uintptr(sfd), name), nil
}
