package agentclient

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/containerd/errdefs"
)

// DefaultMaxStreams is the default of Options.MaxStreams.
const DefaultMaxStreams = 128

// slots is a counting semaphore of the channels open to one agent.
type slots chan struct{}

func newSlots(n int) slots {
	if n <= 0 {
		n = DefaultMaxStreams
	}
	return make(slots, n)
}

// acquire takes a slot, waiting until ctx is done for one to be freed.
func (s slots) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	default:
	}
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("all %d channels to the agent are in use (%w): %w", cap(s), context.Cause(ctx), errdefs.ErrResourceExhausted)
	}
}

func (s slots) release() { <-s }

// slotConn is a channel that holds a slot until it is closed. It has
// CloseWrite: a vsock (or unix) connection's own half-close; on a yamux
// stream, whose Close sends FIN and leaves the receive side open until the
// agent closes its side, Close is the half-close. Close after CloseWrite is
// harmless.
type slotConn struct {
	net.Conn
	// release frees the slot (and forgets the channel); called once.
	release func()
	once    sync.Once
}

// Close closes the connection and frees its slot.
func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite ends the host's side of the channel.
func (c *slotConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return c.Close()
}
