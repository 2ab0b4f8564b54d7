package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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

func newTransport(ctx context.Context, ep hypervisor.AgentEndpoint) (transport, error) {
	switch ep.Transport {
	case hypervisor.TransportSerial:
		return dialSerial(ctx, ep.SocketPath)
	case hypervisor.TransportVsock:
		port := ep.Port
		if port == 0 {
			port = DefaultVsockPort
		}
		return vsockTransport{cid: ep.CID, port: port}, nil
	}
	return nil, fmt.Errorf("agent transport %q: %w", ep.Transport, errdefs.ErrInvalidArgument)
}

// serialTransport is one unix connection to the hypervisor's end of the
// virtio-serial port, carrying one yamux session whose streams are the
// channels. The session starts with channel.SyncHost, which repeats its sync
// frame until the agent answers: bytes the host writes before the agent opens
// the port wait in the socket (QEMU reads nothing from it while the guest
// side is closed), and bytes of an old session are dropped.
type serialTransport struct {
	conn net.Conn
	sess *yamux.Session
}

// dialSerial connects to the socket, retrying while it does not exist yet or
// refuses (the hypervisor is still starting).
func dialSerial(ctx context.Context, path string) (*serialTransport, error) {
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
			sess, err := yamux.Client(synced, channel.YamuxConfig(ctx))
			if err != nil {
				_ = conn.Close()
				return nil, fmt.Errorf("starting yamux session: %w", err)
			}
			return &serialTransport{conn: conn, sess: sess}, nil
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

func (t *serialTransport) open(ctx context.Context) (net.Conn, error) {
	s, err := t.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("opening yamux stream: %w", err)
	}
	return s, nil
}

func (t *serialTransport) close() {
	_ = t.sess.Close()
	_ = t.conn.Close()
}

// vsockTransport dials a new AF_VSOCK connection per channel.
type vsockTransport struct {
	cid, port uint32
}

func (t vsockTransport) open(ctx context.Context) (net.Conn, error) {
	c, err := vsock.DialContext(ctx, t.cid, t.port, nil)
	if err != nil {
		if ctx.Err() == nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
			errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.ENODEV)) {
			return nil, errNotYet{err}
		}
		return nil, err
	}
	return c, nil
}

func (vsockTransport) close() {}

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
			if _, isVsock := t.(vsockTransport); isVsock && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
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
