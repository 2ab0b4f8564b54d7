package agent

import (
	"context"

	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
)

// testHooks are the seams of a test-only agent build: they stay nil in
// every build but the one with the hulltest_hostile tag, whose file sets
// them in an init function. Production code only calls them when set.
var testHooks struct {
	// interceptor runs inside the agent's own interceptor on every call.
	interceptor ttrpc.UnaryServerInterceptor
	// start runs once as PID 1, after the agent is built, with the kernel
	// command line.
	start func(ctx context.Context, a *Agent, cmdline string)
	// session runs in its own goroutine for every yamux session with the
	// host.
	session func(ctx context.Context, sess *yamux.Session)
}
