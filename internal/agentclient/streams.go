package agentclient

import (
	"context"
	"fmt"
	"net"

	"github.com/containerd/errdefs"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/channel"
)

// Containers is the agent's Containers service, on the client's ttRPC
// connection. WaitProcess and WaitOOM block by design and get no
// CallTimeout (see intercept); give them a context that ends.
func (c *Client) Containers() api.ContainersService { return c.containers }

// NewStreamID returns a stdio stream id that no earlier call of this
// client returned; never 0.
func (c *Client) NewStreamID() uint64 { return c.nextStream.Add(1) }

// Stream is one stdio channel to the agent. CloseWrite ends the host's
// side (the process's stdin sees EOF) while output can still be read.
type Stream interface {
	net.Conn
	CloseWrite() error
}

// OpenStream opens the stdio channel id, to be named in the Stdio of the
// CreateContainer or ExecProcess call that follows. Open it before that
// call: the agent waits only a bounded time for a channel a call names, and
// closes a channel that no call claims within a minute.
func (c *Client) OpenStream(ctx context.Context, id uint64) (Stream, error) {
	if id == 0 {
		return nil, fmt.Errorf("stdio stream id 0: %w", errdefs.ErrInvalidArgument)
	}
	ctx, cancel := context.WithTimeout(ctx, c.callTimeout)
	defer cancel()
	conn, err := openChannel(ctx, c.tr, channel.Header{Kind: channel.KindStdio, StreamID: id})
	if err != nil {
		return nil, fmt.Errorf("opening stdio stream %d: %w", id, err)
	}
	s, ok := conn.(Stream)
	if !ok {
		_ = conn.Close()
		return nil, fmt.Errorf("stdio stream %d: channel without a half-close: %w", id, errdefs.ErrInternal)
	}
	return s, nil
}
