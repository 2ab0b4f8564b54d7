package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/hashicorp/yamux"

	"github.com/hull-runtime/hull/internal/channel"
)

// headerTimeout bounds how long a new connection may take to send its
// channel header.
const headerTimeout = 10 * time.Second

// connListener is a net.Listener fed by the demultiplexer: the ttRPC server
// accepts the channels that asked for ttRPC from it.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// deliver hands c to Accept; it fails once the listener is closed.
func (l *connListener) deliver(c net.Conn) error {
	select {
	case l.conns <- c:
		return nil
	case <-l.done:
		return net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return chanAddr{} }

type chanAddr struct{}

func (chanAddr) Network() string { return "hull-channel" }
func (chanAddr) String() string  { return "rpc" }

// handleChannel reads the channel header of a new connection, answers it and
// hands the connection to what serves its kind. It owns conn.
func (a *Agent) handleChannel(ctx context.Context, conn net.Conn) {
	defer a.recoverPanic(ctx, "channel")
	_ = conn.SetReadDeadline(time.Now().Add(headerTimeout))
	h, err := channel.ReadHeader(conn)
	if err == nil && h.Kind == channel.KindStdio && h.StreamID == 0 {
		err = fmt.Errorf("stdio channel with stream id 0: %w", channel.ErrBadHeader)
	}
	if err == nil && a.shuttingDown() {
		err = channel.ErrUnavailable
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("refusing channel")
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_ = channel.WriteAck(conn, channel.AckFor(err))
		}
		_ = conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	if err := channel.WriteAck(conn, channel.AckOK); err != nil {
		log.G(ctx).WithError(err).Warn("accepting channel")
		_ = conn.Close()
		return
	}
	log.G(ctx).WithField("kind", h.Kind).Debug("channel opened")
	switch h.Kind {
	case channel.KindRPC:
		if err := a.rpcListener.deliver(conn); err != nil {
			_ = conn.Close()
		}
	case channel.KindStdio:
		if err := a.streams.park(ctx, h.StreamID, conn); err != nil {
			log.G(ctx).WithError(err).Warn("refusing stdio channel")
		}
	case channel.KindLog:
		defer func() { _ = conn.Close() }()
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// The host never writes on a log channel: a read returns when it
		// closes the channel, which ends the stream.
		go func() {
			_, _ = io.Copy(io.Discard, conn)
			cancel()
		}()
		err := a.ring.stream(sctx, conn) // returns only on an error
		if sctx.Err() == nil {
			log.G(ctx).WithError(err).Debug("log channel ended")
		}
	}
}

// serveSession synchronizes with the host (channel.SyncAgent), runs a yamux
// server session on rwc, the virtio-serial port or a unix connection, and
// handles every stream as a channel. It returns when
// the session ends: the host went away or ctx is done.
func (a *Agent) serveSession(ctx context.Context, rwc io.ReadWriteCloser) error {
	stopSync := context.AfterFunc(ctx, func() { _ = rwc.Close() })
	synced, err := channel.SyncAgent(rwc)
	stopSync()
	if err != nil {
		_ = rwc.Close()
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return nil // the host went away before the session began
		}
		return err
	}
	sess, err := yamux.Server(synced, channel.YamuxConfig(ctx))
	if err != nil {
		_ = rwc.Close()
		return fmt.Errorf("starting yamux session: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = sess.Close() })
	defer stop()
	defer func() { _ = sess.Close() }()
	if testHooks.session != nil {
		go testHooks.session(ctx, sess)
	}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, yamux.ErrSessionShutdown) {
				return nil
			}
			return fmt.Errorf("yamux session: %w", err)
		}
		go a.handleChannel(ctx, st)
	}
}

// serveChannels handles every connection of l as a channel (vsock: one
// connection per channel) until ctx is done or l fails for good. An accept
// error of acceptRetry is logged and retried after a pause that grows to
// maxAcceptDelay; any other error ends serving.
func (a *Agent) serveChannels(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !acceptRetryable(err) {
				return fmt.Errorf("accepting on %s: %w", l.Addr(), err)
			}
			delay = min(max(2*delay, minAcceptDelay), maxAcceptDelay)
			log.G(ctx).WithError(err).WithField("retry_in", delay).Warn("accepting a channel")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		go a.handleChannel(ctx, c)
	}
}

// Pauses between failed accepts of serveChannels.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// acceptRetry lists the accept errnos after which the listener still
// works: a connection that went away before it was accepted, or a moment
// without descriptors or memory (which a closing channel gives back). Any
// other error (a closed listener) ends serving.
var acceptRetry = map[syscall.Errno]bool{
	syscall.ECONNABORTED: true,
	syscall.ECONNRESET:   true,
	syscall.EPROTO:       true,
	syscall.EINTR:        true,
	syscall.EAGAIN:       true,
	syscall.EMFILE:       true,
	syscall.ENFILE:       true,
	syscall.ENOBUFS:      true,
	syscall.ENOMEM:       true,
}

// acceptRetryable reports whether an accept error leaves the listener
// usable (acceptRetry).
func acceptRetryable(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var errno syscall.Errno
	return errors.As(err, &errno) && acceptRetry[errno]
}

// serveSessions runs a yamux session for every connection of l (unix
// sockets standing in for the virtio-serial port) until l fails or ctx is
// done.
func (a *Agent) serveSessions(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting on %s: %w", l.Addr(), err)
		}
		go func() {
			defer a.recoverPanic(ctx, "session")
			if err := a.serveSession(ctx, c); err != nil {
				log.G(ctx).WithError(err).Warn("session ended")
			}
		}()
	}
}
