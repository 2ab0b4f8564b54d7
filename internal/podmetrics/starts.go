package podmetrics

import (
	"context"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hull-runtime/hull/internal/startcount"
)

// startsCollector exposes the node's start counts (package startcount),
// which the shims and every other sandbox start keep under the state root.
type startsCollector struct {
	path                  string
	sandboxes, containers *prometheus.Desc
}

func newStartsCollector(stateRoot string) *startsCollector {
	return &startsCollector{
		path:       startcount.Path(stateRoot),
		sandboxes:  prometheus.NewDesc("hull_sandbox_starts_total", "Sandbox starts on the node, by result (ok, error).", []string{"result"}, nil),
		containers: prometheus.NewDesc("hull_container_starts_total", "Container starts in running sandboxes of the node, by result (ok, error: a failed create or start).", []string{"result"}, nil),
	}
}

func (c *startsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sandboxes
	ch <- c.containers
}

// Collect reads the counts file; when it cannot, the series are left out
// of that scrape (and the reason logged).
func (c *startsCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := startcount.Read(c.path)
	if err != nil {
		log.G(context.Background()).WithError(err).Warn("reading the node's start counts")
		return
	}
	for _, s := range []struct {
		d      *prometheus.Desc
		result string
		v      uint64
	}{
		{c.sandboxes, "ok", n.SandboxOK}, {c.sandboxes, "error", n.SandboxError},
		{c.containers, "ok", n.ContainerOK}, {c.containers, "error", n.ContainerError},
	} {
		ch <- prometheus.MustNewConstMetric(s.d, prometheus.CounterValue, float64(s.v), s.result)
	}
}
