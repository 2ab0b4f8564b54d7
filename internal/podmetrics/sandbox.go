package podmetrics

import (
	"context"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// SandboxSource reads a running sandbox: its host processes and cgroup,
// its boot phases, the agent log lines dropped, and the guest's counters
// (GuestMetrics, without container statistics: the caller that knows the
// containers wraps Guest).
func SandboxSource(sb *sandbox.Sandbox) Source {
	return Source{
		HostProcesses: sb.HostProcesses,
		HostUsage:     sb.HostUsage,
		Guest: func(ctx context.Context) (Guest, error) {
			m, err := sb.System().GuestMetrics(ctx, &agent.GuestMetricsRequest{})
			if err != nil {
				return Guest{}, err
			}
			return Guest{Metrics: m, Containers: map[string]*agent.StatsResponse{}}, nil
		},
		BootPhases:      sb.BootPhases,
		DroppedLogLines: sb.Agent().DroppedLogLines,
	}
}
