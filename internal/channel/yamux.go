package channel

import (
	"context"
	"time"

	"github.com/containerd/log"
	"github.com/hashicorp/yamux"
)

// HostAcceptBacklog is the yamux accept backlog of the host's session. The
// host never accepts a stream: the agent only accepts (see the package
// comment). A stream the guest opens anyway waits in the backlog, never
// read, holding at most one receive window (256 KiB, yamux's minimum) of
// host memory; once the backlog is full, yamux refuses every further
// guest-opened stream with a reset and drops its data unread. The same
// number bounds the host's own stream opens that the agent has not
// acknowledged yet.
const HostAcceptBacklog = 4

// YamuxConfig is the yamux configuration of the agent's end of the
// virtio-serial session. Keepalive is off: an idle VM should not wake up
// for pings, and the host finds a dead agent through its per-call timeouts
// instead. Stream opens never time out on their own, because the host may
// open its first stream long before the agent has opened the port; the host
// bounds them with its dial timeout. yamux's own messages go to log.G(ctx)
// at debug level.
func YamuxConfig(ctx context.Context) *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.StreamOpenTimeout = 0
	c.ConnectionWriteTimeout = 30 * time.Second
	c.LogOutput = nil
	c.Logger = yamuxLogger{log.G(ctx).WithField("component", "yamux")}
	return c
}

// HostYamuxConfig is the yamux configuration of the host's end. It differs
// from the agent's in what bounds the host against a guest that misbehaves:
// the accept backlog is HostAcceptBacklog (the host accepts nothing); every
// stream's receive window stays at yamux's minimum, so a stream buffers at
// most 256 KiB of guest data before the guest must wait for the host to
// read (a guest that sends more breaks the session); and a stream the host
// opens and keeps waiting for must be acknowledged within openTimeout, or
// the session ends (the host opens its first stream only after the session
// sync, when the agent already runs its end). An open that its caller
// abandons at its own deadline is closed at once instead; yamux then lets
// at most HostAcceptBacklog unacknowledged opens wait, and the host's
// opens beyond them fail at their deadline (agentclient bounds those).
func HostYamuxConfig(ctx context.Context, openTimeout time.Duration) *yamux.Config {
	c := YamuxConfig(ctx)
	c.AcceptBacklog = HostAcceptBacklog
	c.MaxStreamWindowSize = yamux.DefaultConfig().MaxStreamWindowSize
	c.StreamOpenTimeout = openTimeout
	return c
}

// yamuxLogger sends yamux's messages to a logrus entry at debug level.
type yamuxLogger struct{ e *log.Entry }

func (l yamuxLogger) Print(v ...any)                 { l.e.Debug(v...) }
func (l yamuxLogger) Printf(format string, v ...any) { l.e.Debugf(format, v...) }
func (l yamuxLogger) Println(v ...any)               { l.e.Debugln(v...) }
