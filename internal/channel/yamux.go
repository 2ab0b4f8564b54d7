package channel

import (
	"context"
	"time"

	"github.com/containerd/log"
	"github.com/hashicorp/yamux"
)

// YamuxConfig is the yamux configuration of both ends of the virtio-serial
// session. Keepalive is off: an idle VM should not wake up for pings, and the
// host finds a dead agent through its per-call timeouts instead. Stream opens
// never time out on their own, because the host may open its first stream
// long before the agent has opened the port; the host bounds them with its
// dial timeout. yamux's own messages go to log.G(ctx) at debug level.
func YamuxConfig(ctx context.Context) *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.StreamOpenTimeout = 0
	c.ConnectionWriteTimeout = 30 * time.Second
	c.LogOutput = nil
	c.Logger = yamuxLogger{log.G(ctx).WithField("component", "yamux")}
	return c
}

// yamuxLogger sends yamux's messages to a logrus entry at debug level.
type yamuxLogger struct{ e *log.Entry }

func (l yamuxLogger) Print(v ...any)                 { l.e.Debug(v...) }
func (l yamuxLogger) Printf(format string, v ...any) { l.e.Debugf(format, v...) }
func (l yamuxLogger) Println(v ...any)               { l.e.Debugln(v...) }
