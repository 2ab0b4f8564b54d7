package agentclient

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
	"github.com/hashicorp/yamux"
	"github.com/mdlayher/vsock"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// transport opens raw connections to the agent, one per channel.
type transport interface {
	// open returns a new connection, before its channel header. A
	// retryable error means the agent is not listening yet.
	open(ctx context.Context) (net.Conn, error)
	close()
}

// errNotYet marks an error that goes away once the agent listens.
type errNotYet struct{ err error }

func (e errNotYet) Error() string { return e.err.Error() }
func (e errNotYet) Unwrap() error { return e.err }

func newTransport(ctx context.Context, ep hypervisor.AgentEndpoint, lim limits) (transport, error) {
	switch ep.Transport {
	case hypervisor.TransportSerial:
		return dialSerial(ctx, ep.SocketPath, lim)
	case hypervisor.TransportVsock:
		port := ep.Port
		if port == 0 {
			port = DefaultVsockPort
		}
		if ep.VsockUnixDir != "" {
			sock := channel.VsockUnixSocket(ep.VsockUnixDir, port)
			return newConnTransport("vsock-unix:"+sock, unixDialer(sock), lim), nil
		}
		return newConnTransport(fmt.Sprintf("vsock:%d:%d", ep.CID, port), vsockDialer(ep.CID, port), lim), nil
	}
	return nil, fmt.Errorf("agent transport %q: %w", ep.Transport, errdefs.ErrInvalidArgument)
}

// limits bound what one connection to the agent may hold on the host.
type limits struct {
	// maxStreams bounds the host's open channels (ttRPC, log, stdio).
	maxStreams int
	// openTimeout bounds the agent's acknowledgement of a yamux stream
	// the host opened; past it the session ends (channel.HostYamuxConfig).
	openTimeout time.Duration
}

// serialTransport is one unix connection to the hypervisor's end of the
// virtio-serial port, carrying one yamux session whose streams are the
// channels. The session starts with channel.SyncHost, which repeats its sync
// frame until the agent answers: bytes the host writes before the agent opens
// the port wait in the socket (QEMU reads nothing from it while the guest
// side is closed), and bytes of an old session are dropped.
//
// The host never accepts a stream: what the guest opens is refused by the
// session's configuration (channel.HostYamuxConfig), and the streams the
// host opens are at most maxStreams at a time (slots).
type serialTransport struct {
	conn  io.Closer
	sess  *yamux.Session
	slots slots
}

// dialSerial connects to the socket, retrying while it does not exist yet or
// refuses (the hypervisor is still starting).
func dialSerial(ctx context.Context, path string, lim limits) (*serialTransport, error) {
	if path == "" {
		return nil, fmt.Errorf("serial agent endpoint without a socket path: %w", errdefs.ErrInvalidArgument)
	}
	var d net.Dialer
	delay := 5 * time.Millisecond
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			synced, err := channel.SyncHost(ctx, conn)
			if err != nil {
				_ = conn.Close()
				return nil, err
			}
			t, err := newSerialTransport(ctx, synced, lim)
			if err != nil {
				_ = conn.Close()
				return nil, err
			}
			return t, nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connecting to %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to %s: %w", path, err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// newSerialTransport starts the host's yamux session on a synchronized
// connection.
func newSerialTransport(ctx context.Context, conn io.ReadWriteCloser, lim limits) (*serialTransport, error) {
	sess, err := yamux.Client(conn, channel.HostYamuxConfig(ctx, lim.openTimeout))
	if err != nil {
		return nil, fmt.Errorf("starting yamux session: %w", err)
	}
	return &serialTransport{conn: conn, sess: sess, slots: newSlots(lim.maxStreams)}, nil
}

// open takes a slot and opens a stream, both until ctx is done. yamux's
// OpenStream has no context (it waits while HostAcceptBacklog opens are
// unacknowledged), so it runs aside; if ctx ends first, the stream it opens
// later is closed and its slot freed then. That wait is bounded by the
// session's open timeout.
func (t *serialTransport) open(ctx context.Context) (net.Conn, error) {
	if err := t.slots.acquire(ctx); err != nil {
		return nil, err
	}
	type result struct {
		s   *yamux.Stream
		err error
	}
	ch, abandoned := make(chan result), make(chan struct{})
	go func() {
		s, err := t.sess.OpenStream()
		select {
		case ch <- result{s, err}:
		case <-abandoned:
			if s != nil {
				_ = s.Close()
			}
			t.slots.release()
		}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.slots.release()
			return nil, fmt.Errorf("opening yamux stream: %w", sessionErr(r.err))
		}
		return &slotConn{Conn: r.s, release: t.slots.release}, nil
	case <-ctx.Done():
		close(abandoned)
		return nil, fmt.Errorf("opening yamux stream: %w", context.Cause(ctx))
	}
}

// sessionErr classifies yamux's errors for a stream open: an ended session
// (the agent broke the protocol, stopped acknowledging opens, or the
// connection closed) is unavailable.
func sessionErr(err error) error {
	if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrStreamsExhausted) || errors.Is(err, yamux.ErrRemoteGoAway) {
		return fmt.Errorf("agent session ended: %w: %w", err, errdefs.ErrUnavailable)
	}
	return err
}

func (t *serialTransport) close() {
	_ = t.sess.Close()
	_ = t.conn.Close()
}

// connTransport dials a new connection per channel (vsock), at most
// maxStreams at a time. dial is the address family: AF_VSOCK to the guest's
// CID and port, or the unix socket standing for that port
// (hypervisor.AgentEndpoint.VsockUnixDir); everything else (slots, error
// classes, close) is the same code for both.
type connTransport struct {
	// name is the endpoint, for errors.
	name  string
	dial  func(ctx context.Context) (net.Conn, error)
	slots slots

	mu sync.Mutex
	// conns are the channels open now. Guarded by mu.
	conns map[*slotConn]struct{}
	// closed is set by close. Guarded by mu.
	closed bool
}

func newConnTransport(name string, dial func(context.Context) (net.Conn, error), lim limits) *connTransport {
	return &connTransport{name: name, dial: dial, slots: newSlots(lim.maxStreams), conns: make(map[*slotConn]struct{})}
}

// vsockDialer dials AF_VSOCK cid:port.
func vsockDialer(cid, port uint32) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) { return vsock.DialContext(ctx, cid, port, nil) }
}

// unixDialer dials the unix socket at path.
func unixDialer(path string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

func (t *connTransport) open(ctx context.Context) (net.Conn, error) {
	if err := t.slots.acquire(ctx); err != nil {
		return nil, err
	}
	c, err := t.dial(ctx)
	if err != nil {
		t.slots.release()
		if ctx.Err() == nil && dialRetryable(err) {
			return nil, errNotYet{err}
		}
		return nil, fmt.Errorf("connecting to %s: %w", t.name, err)
	}
	sc := &slotConn{Conn: c}
	sc.release = func() {
		t.mu.Lock()
		delete(t.conns, sc)
		t.mu.Unlock()
		t.slots.release()
	}
	t.mu.Lock()
	closed := t.closed
	if !closed {
		t.conns[sc] = struct{}{}
	}
	t.mu.Unlock()
	if closed {
		_ = c.Close()
		t.slots.release()
		return nil, fmt.Errorf("connection to %s closed: %w", t.name, errdefs.ErrUnavailable)
	}
	return sc, nil
}

// close closes every channel open on t (a full close, both directions: a
// reader waiting for a frozen guest returns at once) and fails every later
// open.
func (t *connTransport) close() {
	t.mu.Lock()
	t.closed = true
	conns := make([]*slotConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// dialRetry classifies the errnos of a channel's connect. true: the agent
// is not there yet, the dial is retried until the dial context ends; false:
// the host cannot reach the guest this way at all, the dial fails at once.
// An errno not listed is fatal.
var dialRetry = map[syscall.Errno]bool{
	// Nothing listens on the port yet (the agent is starting).
	syscall.ECONNREFUSED: true,
	// The guest's vsock driver reset the connection: no listener yet.
	syscall.ECONNRESET: true,
	// The guest did not answer within the vsock connect timeout (still
	// booting, or under load).
	syscall.ETIMEDOUT: true,
	// The VM's vhost-vsock device is not running yet: the host has no
	// guest by that CID.
	syscall.ENODEV: true,
	// vsock-unix: the agent has not created its socket yet.
	syscall.ENOENT: true,
	// unix: the agent's accept backlog is full for a moment.
	syscall.EAGAIN: true,
	syscall.EINTR:  true,

	// The host kernel has no AF_VSOCK (vsock module missing).
	syscall.EAFNOSUPPORT: false,
	// No vsock transport reaches the CID (vhost_vsock not loaded).
	syscall.ENETUNREACH: false,
	// Not allowed (LSM, permissions on the socket).
	syscall.EACCES: false,
	syscall.EPERM:  false,
	// A bad CID or port.
	syscall.EINVAL:        false,
	syscall.EADDRNOTAVAIL: false,
	// The host is out of descriptors or memory: waiting does not help
	// within a dial, and spinning makes it worse.
	syscall.EMFILE:  false,
	syscall.ENFILE:  false,
	syscall.ENOMEM:  false,
	syscall.ENOBUFS: false,
	// vsock-unix: the path is not a socket.
	syscall.ENOTSOCK: false,
}

// dialRetryable reports whether a connect error is worth a retry
// (dialRetry).
func dialRetryable(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	return dialRetry[errno]
}

// openChannel opens a connection on t and its channel h, retrying while the
// agent is not there yet, until ctx is done.
func openChannel(ctx context.Context, t transport, h channel.Header) (net.Conn, error) {
	delay := 10 * time.Millisecond
	for {
		c, err := t.open(ctx)
		if err == nil {
			err = channel.Open(ctx, c, h)
			if err == nil {
				return c, nil
			}
			_ = c.Close()
			// A vsock connection that the guest resets before the
			// agent accepts it is a "not yet" too.
			if _, perConn := t.(*connTransport); perConn && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
				err = errNotYet{err}
			}
		}
		var ny errNotYet
		if !errors.As(err, &ny) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}
