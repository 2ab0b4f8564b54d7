package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/log"
	"github.com/mdlayher/vsock"
)

// serveVsock listens on the AF_VSOCK port and handles every connection as a
// channel until ctx is done. Listening is retried for a while: the vsock
// transport registers itself when its driver binds the device.
func (a *Agent) serveVsock(ctx context.Context, port uint32) error {
	delay := time.Millisecond
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := vsock.Listen(port, nil)
		if err == nil {
			a.markServing(ctx)
			return a.serveChannels(ctx, l)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("listening on vsock port %d: %w", port, err)
		}
		log.G(ctx).WithError(err).Debug("vsock not ready")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}
