package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agentclient"
)

// ConsoleSocketName is the unix socket in a sandbox's state directory on
// which the sandbox serves debug consoles (`hull exec`) when its Config
// enables them. The state directory is 0700, so only root reaches it.
//
// The protocol: the client writes one JSON line, a ConsoleRequest; the
// sandbox answers one JSON line, a ConsoleReply. After a reply without an
// error the connection carries the guest terminal both ways: what the client
// writes is typed, what the shell prints comes back. The sandbox closes the
// connection when the shell has exited; a client that closes its side hangs
// the shell up. A client whose input ends should rather type "exit", as a
// terminal user does, so that the shell reads everything first.
const ConsoleSocketName = "console.sock"

// Bounds of a console request.
const (
	consoleRequestLimit   = 4096
	consoleRequestTimeout = 10 * time.Second
	// consoleStartTimeout bounds opening the stream and starting the shell.
	consoleStartTimeout = 30 * time.Second
)

// ConsoleRequest is what a console client asks for: a new console, or with
// ResizePID the new size of a running one, or with WaitPID its shell's exit
// status (the connection then ends with the reply).
type ConsoleRequest struct {
	// Term is the shell's TERM; empty leaves the agent's default.
	Term string `json:"term,omitempty"`
	// Width and Height of the terminal in characters; 0 leaves the default.
	Width  uint32 `json:"width,omitempty"`
	Height uint32 `json:"height,omitempty"`
	// ResizePID names the console to resize by its shell's guest PID.
	ResizePID uint32 `json:"resize_pid,omitempty"`
	// WaitPID names the console whose shell's exit status to wait for.
	WaitPID uint32 `json:"wait_pid,omitempty"`
}

// ConsoleReply answers a ConsoleRequest: the shell's PID in the guest, or
// why there is no shell.
type ConsoleReply struct {
	PID   uint32 `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
	// ExitStatus answers WaitPID: the exit code, or 128 + the signal.
	ExitStatus *int32 `json:"exit_status,omitempty"`
}

// consoleServer serves ConsoleSocketName for one sandbox.
type consoleServer struct {
	l  net.Listener
	wg sync.WaitGroup
	// ctx bounds the agent calls of the consoles; closeConsoles cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu sync.Mutex
	// open are the client connections and guest streams of the consoles
	// being served; guarded by mu. closed is set by closeConsoles, after
	// which nothing new is taken.
	open   map[net.Conn]struct{}
	closed bool
}

// DebugConsole starts the guest image's debug shell on a new terminal and
// returns the stream that carries the terminal and the shell's guest PID.
// The agent serves it only when the sandbox's Config enabled it.
func (s *Sandbox) DebugConsole(ctx context.Context, r ConsoleRequest) (agentclient.Stream, uint32, error) {
	if err := s.consoleReady(); err != nil {
		return nil, 0, err
	}
	id := s.client.NewStreamID()
	stream, err := s.client.OpenStream(ctx, id)
	if err != nil {
		return nil, 0, fmt.Errorf("opening the console stream: %w", s.guestError(err))
	}
	resp, err := s.client.System().DebugConsole(ctx, &agent.DebugConsoleRequest{
		StreamId: id, Width: r.Width, Height: r.Height, Term: r.Term,
	})
	if err != nil {
		_ = stream.Close()
		return nil, 0, fmt.Errorf("starting the debug console: %w", s.guestError(err))
	}
	return stream, resp.GetPid(), nil
}

// consoleReady refuses the console calls of a sandbox that is not running.
func (s *Sandbox) consoleReady() error {
	if st := s.State(); st != StateRunning {
		return fmt.Errorf("debug console: sandbox %s is %s: %w", s.id, st, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// ResizeDebugConsole sets the terminal size of the debug console whose
// shell has guest PID pid.
func (s *Sandbox) ResizeDebugConsole(ctx context.Context, pid, width, height uint32) error {
	if err := s.consoleReady(); err != nil {
		return err
	}
	_, err := s.client.System().ResizeDebugConsole(ctx, &agent.ResizeDebugConsoleRequest{Pid: pid, Width: width, Height: height})
	if err != nil {
		return fmt.Errorf("resizing the debug console: %w", s.guestError(err))
	}
	return nil
}

// WaitDebugConsole waits until the shell of the debug console pid has
// exited and returns its exit status (the agent keeps it a few minutes).
func (s *Sandbox) WaitDebugConsole(ctx context.Context, pid uint32) (int32, error) {
	if err := s.consoleReady(); err != nil {
		return 0, err
	}
	r, err := s.client.System().WaitDebugConsole(ctx, &agent.WaitDebugConsoleRequest{Pid: pid})
	if err != nil {
		return 0, fmt.Errorf("waiting for the debug console: %w", s.guestError(err))
	}
	return r.GetExitStatus(), nil
}

// listenConsoles serves ConsoleSocketName until closeConsoles.
func (s *Sandbox) listenConsoles(undo *cleanups) error {
	path := filepath.Join(s.stateDir, ConsoleSocketName)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return err
	}
	cs := &consoleServer{l: l, open: map[net.Conn]struct{}{}}
	cs.ctx, cs.cancel = context.WithCancel(s.bg)
	s.mu.Lock()
	s.consoles = cs
	s.mu.Unlock()
	undo.push(func(context.Context) error { s.closeConsoles(); return nil })
	cs.wg.Add(1)
	go func() {
		defer cs.wg.Done()
		// Whatever ends the loop, no client may wait on a socket that is
		// no longer served.
		defer func() { _ = l.Close() }()
		delay := 5 * time.Millisecond
		for {
			c, err := l.Accept()
			if err != nil {
				var ne net.Error
				if errors.Is(err, net.ErrClosed) || !errors.As(err, &ne) || !ne.Timeout() && !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) {
					if !errors.Is(err, net.ErrClosed) {
						log.G(s.bg).WithError(err).WithField("sandbox", s.id).Warn("debug console socket: no longer accepting")
					}
					return
				}
				// Out of descriptors, for a moment: try again.
				select {
				case <-cs.ctx.Done():
					return
				case <-time.After(delay):
				}
				delay = min(2*delay, time.Second)
				continue
			}
			delay = 5 * time.Millisecond
			if !cs.track(c) {
				_ = c.Close()
				return
			}
			cs.wg.Add(1)
			go func() {
				defer cs.wg.Done()
				defer cs.untrack(c)
				s.serveConsole(cs, c)
			}()
		}
	}()
	return nil
}

// closeConsoles stops serving consoles and ends the open ones: the guest
// hangs their shells up.
func (s *Sandbox) closeConsoles() {
	s.mu.Lock()
	cs := s.consoles
	s.mu.Unlock()
	if cs == nil {
		return
	}
	cs.cancel()
	cs.mu.Lock()
	cs.closed = true
	for c := range cs.open {
		// Close alone does not end a read of a guest stream on virtio-serial
		// (yamux only half-closes it) when the guest no longer answers; a
		// deadline does.
		_ = c.SetDeadline(time.Unix(1, 0))
		_ = c.Close()
	}
	cs.mu.Unlock()
	_ = cs.l.Close()
	cs.wg.Wait()
}

// track records c to be closed by closeConsoles; false once that began.
func (cs *consoleServer) track(c net.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return false
	}
	cs.open[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (cs *consoleServer) untrack(c net.Conn) {
	cs.mu.Lock()
	delete(cs.open, c)
	cs.mu.Unlock()
	_ = c.Close()
}

// serveConsole runs one client's console: request, reply, then the
// terminal both ways until either side ends.
func (s *Sandbox) serveConsole(cs *consoleServer, c net.Conn) {
	ctx := cs.ctx
	_ = c.SetReadDeadline(time.Now().Add(consoleRequestTimeout))
	line, err := readLine(c, consoleRequestLimit)
	var req ConsoleRequest
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	if err != nil {
		_ = writeReply(c, ConsoleReply{Error: fmt.Sprintf("bad console request: %v", err)})
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if req.WaitPID != 0 {
		var reply ConsoleReply
		if status, err := s.WaitDebugConsole(ctx, req.WaitPID); err != nil {
			reply.Error = err.Error()
		} else {
			reply.ExitStatus = &status
		}
		_ = writeReply(c, reply)
		return
	}
	if req.ResizePID != 0 {
		rctx, cancel := context.WithTimeout(ctx, consoleStartTimeout)
		defer cancel()
		var reply ConsoleReply
		if err := s.ResizeDebugConsole(rctx, req.ResizePID, req.Width, req.Height); err != nil {
			reply.Error = err.Error()
		}
		_ = writeReply(c, reply)
		return
	}
	sctx, cancel := context.WithTimeout(ctx, consoleStartTimeout)
	stream, pid, err := s.DebugConsole(sctx, req)
	cancel()
	if err != nil {
		log.G(ctx).WithError(err).WithField("sandbox", s.id).Warn("debug console refused")
		_ = writeReply(c, ConsoleReply{Error: err.Error()})
		return
	}
	if !cs.track(stream) {
		_ = stream.Close()
		return
	}
	defer cs.untrack(stream)
	if err := writeReply(c, ConsoleReply{PID: pid}); err != nil {
		return
	}
	log.G(ctx).WithFields(log.Fields{"sandbox": s.id, "pid": pid}).Info("debug console opened")
	// Input: when the client closes, the guest hangs the shell up.
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		_, _ = io.Copy(stream, c)
		_ = stream.CloseWrite()
	}()
	// Output: until the shell has exited (the agent closes the stream) or
	// the client is gone.
	_, err = io.Copy(c, stream)
	if err != nil && !isClosedErr(err) && !errors.Is(err, syscall.EPIPE) {
		log.G(ctx).WithError(err).WithField("sandbox", s.id).Debug("debug console output")
	}
	_ = c.Close() // ends the input copy
	<-inputDone
	log.G(ctx).WithFields(log.Fields{"sandbox": s.id, "pid": pid}).Info("debug console closed")
}

// readLine reads up to and without a newline, one byte at a time so that
// nothing after it is consumed, at most limit bytes.
func readLine(r io.Reader, limit int) ([]byte, error) {
	var b bytes.Buffer
	var one [1]byte
	for b.Len() <= limit {
		if _, err := io.ReadFull(r, one[:]); err != nil {
			return nil, err
		}
		if one[0] == '\n' {
			return b.Bytes(), nil
		}
		b.WriteByte(one[0])
	}
	return nil, fmt.Errorf("line longer than %d bytes", limit)
}

func writeReply(w io.Writer, r ConsoleReply) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// DialConsole opens a debug console of the sandbox whose state directory is
// dir: it sends r and returns the connection that carries the terminal once
// the shell runs, with its guest PID.
func DialConsole(ctx context.Context, dir string, r ConsoleRequest) (net.Conn, uint32, error) {
	c, reply, err := consoleCall(ctx, dir, r)
	if err != nil {
		return nil, 0, fmt.Errorf("debug console: %w", err)
	}
	return c, reply.PID, nil
}

// ResizeConsole sets the terminal size of the debug console whose shell has
// guest PID pid, in the sandbox whose state directory is dir.
func ResizeConsole(ctx context.Context, dir string, pid, width, height uint32) error {
	if pid == 0 {
		return fmt.Errorf("resizing a debug console: no pid: %w", errdefs.ErrInvalidArgument)
	}
	c, _, err := consoleCall(ctx, dir, ConsoleRequest{ResizePID: pid, Width: width, Height: height})
	if err != nil {
		return fmt.Errorf("resizing the debug console: %w", err)
	}
	return c.Close()
}

// WaitConsole waits until the shell of the debug console pid, in the
// sandbox whose state directory is dir, has exited and returns its exit
// status: the exit code, or 128 + the signal that ended it.
func WaitConsole(ctx context.Context, dir string, pid uint32) (int, error) {
	if pid == 0 {
		return 0, fmt.Errorf("waiting for a debug console: no pid: %w", errdefs.ErrInvalidArgument)
	}
	c, reply, err := consoleCall(ctx, dir, ConsoleRequest{WaitPID: pid})
	if err == nil && reply.ExitStatus == nil {
		err = errors.New("the sandbox answered without a status")
		_ = c.Close()
	}
	if err != nil {
		return 0, fmt.Errorf("waiting for the debug console: %w", err)
	}
	_ = c.Close()
	return int(*reply.ExitStatus), nil
}

// consoleCall sends r on dir's console socket and returns the connection
// and the sandbox's reply; an error reply is an error.
func consoleCall(ctx context.Context, dir string, r ConsoleRequest) (net.Conn, ConsoleReply, error) {
	path := filepath.Join(dir, ConsoleSocketName)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(dir, recordName)); errors.Is(serr, os.ErrNotExist) {
			return nil, ConsoleReply{}, fmt.Errorf("the sandbox in %s is gone: %w", dir, errdefs.ErrNotFound)
		}
		return nil, ConsoleReply{}, fmt.Errorf("sandbox in %s serves no debug console: it serves one only with [agent] debug_console = true in the configuration when it started, and not while it stops: %w", dir, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return nil, ConsoleReply{}, fmt.Errorf("connecting to the debug console: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, err := json.Marshal(r)
	if err == nil {
		_, err = c.Write(append(b, '\n'))
	}
	var line []byte
	if err == nil {
		line, err = readLine(c, consoleRequestLimit)
	}
	var reply ConsoleReply
	if err == nil {
		err = json.Unmarshal(line, &reply)
	}
	if err == nil && reply.Error != "" {
		err = errors.New(reply.Error)
	}
	if err == nil && !stop() {
		err = ctx.Err()
	}
	if err != nil {
		_ = c.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, ConsoleReply{}, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, reply, nil
}
