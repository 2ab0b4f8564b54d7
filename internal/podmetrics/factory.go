package podmetrics

import (
	"context"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
)

// factoryTimeout bounds one read of a factory's status.
const factoryTimeout = 2 * time.Second

// FactoryStatus is what a VM factory reports of its pool of booted VMs.
type FactoryStatus struct {
	// Wanted is the pool's target size; Ready the VMs booted and waiting
	// to be claimed, Booting those still booting.
	Wanted, Ready, Booting uint64
	// Hits and Misses count claims that took a ready VM, and those that
	// found none (and booted one of their own), since the factory started.
	Hits, Misses uint64
}

// FactorySource reads a factory's status; the monitor calls it once per
// scrape, within factoryTimeout.
type FactorySource func(ctx context.Context) (FactoryStatus, error)

// FactoryCollector is the prometheus.Collector of a VM factory.
type FactoryCollector struct {
	src                     FactorySource
	up, vms, wanted, claims *prometheus.Desc
}

// NewFactoryCollector returns the collector of the factory src reads.
func NewFactoryCollector(src FactorySource) *FactoryCollector {
	return &FactoryCollector{
		src:    src,
		up:     prometheus.NewDesc("hull_factory_up", "1 when the last read of the VM factory's status succeeded.", nil, nil),
		vms:    prometheus.NewDesc("hull_factory_vms", "VMs in the factory's pool, by state (ready, booting).", []string{"state"}, nil),
		wanted: prometheus.NewDesc("hull_factory_vms_wanted", "The factory pool's target size.", nil, nil),
		claims: prometheus.NewDesc("hull_factory_claims_total", "Claims of a VM from the factory, by result: hit (a ready VM) or miss (none ready).", []string{"result"}, nil),
	}
}

// Describe sends the factory's series.
func (c *FactoryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.vms
	ch <- c.wanted
	ch <- c.claims
}

// Collect reads the factory's status and sends its series; when the read
// fails, only hull_factory_up (0).
func (c *FactoryCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), factoryTimeout)
	defer cancel()
	st, err := c.src(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Debug("reading the VM factory's status")
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.vms, prometheus.GaugeValue, float64(st.Ready), "ready")
	ch <- prometheus.MustNewConstMetric(c.vms, prometheus.GaugeValue, float64(st.Booting), "booting")
	ch <- prometheus.MustNewConstMetric(c.wanted, prometheus.GaugeValue, float64(st.Wanted))
	ch <- prometheus.MustNewConstMetric(c.claims, prometheus.CounterValue, float64(st.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(c.claims, prometheus.CounterValue, float64(st.Misses), "miss")
}
