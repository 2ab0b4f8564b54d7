package factory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// readyMessage is what a warm shim writes on its lifeline once it can be
// claimed.
const readyMessage = "ready\n"

// commitTimeout bounds a warm shim's wait for the claimer's commit after
// its reply; the claimer's own bound (factory.claim_timeout, at most a
// minute) is what normally ends a hand-over.
const commitTimeout = 90 * time.Second

// handoverTimeout bounds the read of a hand-over from an accepted
// connection.
const handoverTimeout = 10 * time.Second

// ErrLifelineClosed is the end of a warm shim's wait when the factory went
// away (its lifeline reached end of file) before a claim.
var ErrLifelineClosed = fmt.Errorf("factory gone before a claim: %w", errdefs.ErrUnavailable)

// WarmShim is a warm shim's side of the factory: the lifeline from the
// factory and the control socket the shim is claimed on.
type WarmShim struct {
	lifeline *os.File
	ln       *net.UnixListener
}

// Warm takes the warm shim's lifeline (its end of the socket pair the
// factory made) and returns a context derived from ctx that ends, with
// cause ErrLifelineClosed, when the factory goes away: the context of the
// shim's life before a claim. Close (done by Wait) ends the watch.
func Warm(ctx context.Context, lifeline *os.File) (*WarmShim, context.Context) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		// The factory writes nothing; any read that returns is its end.
		_, _ = lifeline.Read(make([]byte, 1))
		cancel(ErrLifelineClosed)
	}()
	return &WarmShim{lifeline: lifeline}, ctx
}

// Listen makes the control socket at socket (mode 0600).
func (w *WarmShim) Listen(socket string) error {
	_ = os.Remove(socket) // a socket left by a warm shim of the same ID is stale
	old := unix.Umask(0o077)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socket, Net: "unixpacket"})
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("warm shim control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	w.ln = ln
	return nil
}

// Ready tells the factory that the warm shim can be claimed.
func (w *WarmShim) Ready() error {
	if _, err := io.WriteString(w.lifeline, readyMessage); err != nil {
		return fmt.Errorf("telling the factory the warm shim is ready: %w", err)
	}
	return nil
}

// Close closes the control socket (removing it) and the lifeline.
func (w *WarmShim) Close() {
	if w.ln != nil {
		_ = w.ln.Close()
	}
	_ = w.lifeline.Close()
}

// Claim is a committed hand-over: the warm shim is the pod's now.
type Claim struct {
	Handover
	// Listener is the pod's listening shim socket.
	Listener *os.File
}

// Wait waits on the control socket for a claim until ctx ends (Warm's
// context ends when the factory goes away). A hand-over is read from the
// first connection whose peer has this process's user ID; prepare then
// readies the shim to serve it, and only when it succeeds is the
// hand-over accepted; Wait returns once the claimer committed it. Once a
// hand-over was read it runs to its end whatever happens to ctx. An error
// other than ctx's cause means a hand-over failed: the claim took the shim
// out of the factory's pool, so the caller stops its VM and exits. The
// control socket and the lifeline are closed when Wait returns.
func (w *WarmShim) Wait(ctx context.Context, prepare func(Handover, *os.File) error) (*Claim, error) {
	defer w.Close()
	stop := context.AfterFunc(ctx, func() { _ = w.ln.Close() })
	defer stop()
	for {
		conn, err := w.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, fmt.Errorf("accepting a hand-over: %w", err)
		}
		if !samePeer(conn) {
			log.G(ctx).Warn("hand-over from a peer of another user refused")
			_ = conn.Close()
			continue
		}
		c, err := w.handle(ctx, conn, prepare)
		_ = conn.Close()
		return c, err
	}
}

// handle runs one hand-over on conn.
func (w *WarmShim) handle(ctx context.Context, conn *net.UnixConn, prepare func(Handover, *os.File) error) (*Claim, error) {
	_ = conn.SetDeadline(time.Now().Add(handoverTimeout))
	h, f, err := receiveHandover(conn)
	if err == nil {
		if err = prepare(h, f); err != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		_ = writeJSON(conn, handoverReply{Error: err.Error()})
		return nil, err
	}
	if err := writeJSON(conn, handoverReply{PID: os.Getpid()}); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("answering hand-over: %w", err)
	}
	_ = conn.SetDeadline(time.Now().Add(commitTimeout))
	buf := make([]byte, len(commitMessage)+1)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != commitMessage {
		_ = f.Close()
		if err == nil {
			err = errors.New("unexpected message")
		}
		return nil, fmt.Errorf("hand-over not committed: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"namespace": h.Namespace, "id": h.ID}).Info("claimed")
	return &Claim{Handover: h, Listener: f}, nil
}

// samePeer tells whether conn's peer runs as this process's user.
func samePeer(conn *net.UnixConn) bool {
	cred, err := peerCred(conn)
	return err == nil && int(cred.Uid) == os.Geteuid()
}

// peerCred returns the credentials of conn's peer (SO_PEERCRED).
func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, credErr
}
