package shim

import (
	"context"
	"sort"

	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/podmetrics"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// maxStatsContainers bounds the containers whose guest statistics one
// metrics read asks for.
const maxStatsContainers = 256

// serveMetrics serves the sandbox's metrics endpoint in its state
// directory (podmetrics). A failure is logged: the pod runs without it.
func (s *service) serveMetrics(ctx context.Context, sb *sandbox.Sandbox, col *podmetrics.Collector) {
	src := podmetrics.SandboxSource(sb)
	src.Guest = func(ctx context.Context) (podmetrics.Guest, error) { return s.guestMetrics(ctx, sb) }
	s.mu.Lock()
	src.Start = s.start
	s.mu.Unlock()
	src.Size = func() (uint32, uint32) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.size.vcpus, s.size.memoryMiB
	}
	col.SetSource(src)
	srv, err := podmetrics.Serve(sb.StateDir(), col, s.metricsInfo)
	if err != nil {
		log.G(ctx).WithError(err).Warn("the sandbox's metrics endpoint does not serve")
		return
	}
	s.mu.Lock()
	s.metricsServer = srv
	s.mu.Unlock()
}

// stopMetrics stops the metrics endpoint, before the sandbox stops.
func (s *service) stopMetrics(ctx context.Context) {
	s.mu.Lock()
	srv := s.metricsServer
	s.metricsServer = nil
	s.mu.Unlock()
	if srv != nil {
		if err := srv.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("closing the metrics endpoint")
		}
	}
}

// countContainer counts a container start, or a failed create or start,
// once the sandbox's collector exists.
func (s *service) countContainer(err error) {
	s.mu.Lock()
	col := s.collector
	s.mu.Unlock()
	if col != nil {
		col.ContainerStarted(err)
	}
}

// guestMetrics asks the agent for the guest's counters and the statistics
// of the running containers.
func (s *service) guestMetrics(ctx context.Context, sb *sandbox.Sandbox) (podmetrics.Guest, error) {
	m, err := sb.System().GuestMetrics(ctx, &agent.GuestMetricsRequest{})
	if err != nil {
		return podmetrics.Guest{}, err
	}
	g := podmetrics.Guest{Metrics: m, Containers: map[string]*agent.StatsResponse{}}
	s.mu.Lock()
	var running []*container
	for _, c := range s.containers {
		if c != nil && c.init.isRunning() && !c.init.exited() && len(running) < maxStatsContainers {
			running = append(running, c)
		}
	}
	s.mu.Unlock()
	for _, c := range running {
		if st, err := c.c.Stats(ctx); err == nil {
			g.Containers[c.id] = st
		}
	}
	return g, nil
}

// metricsInfo is the endpoint's /info answer.
func (s *service) metricsInfo() podmetrics.Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	info := podmetrics.Info{
		VMMPID: int(s.vmPid), VCPUs: s.size.vcpus, MemoryMiB: s.size.memoryMiB,
		Containers: []string{},
	}
	if s.collector != nil {
		l := s.collector.Labels()
		info.Sandbox, info.PodName, info.PodNamespace, info.PodUID = l.Sandbox, l.PodName, l.PodNamespace, l.PodUID
	}
	for id, c := range s.containers {
		if c != nil {
			info.Containers = append(info.Containers, id)
		}
	}
	sort.Strings(info.Containers)
	return info
}
