package podmetrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Bounds of the monitor.
const (
	// DefaultShimTimeout bounds the scrape of one shim.
	DefaultShimTimeout = 5 * time.Second
	// DefaultParallel bounds the shims scraped at a time.
	DefaultParallel = 16
	// maxSandboxes bounds the state directories one gather reads.
	maxSandboxes = 4096
	// maxShimResponse bounds one shim's answer.
	maxShimResponse = 4 << 20
	// metricPrefix starts every series name the monitor passes on.
	metricPrefix = "hull_"
)

// Monitor gathers the metrics of every sandbox under a state root from
// their shims' endpoints. It is a prometheus.Gatherer.
type Monitor struct {
	// StateRoot is runtime.state_dir.
	StateRoot string
	// ShimTimeout bounds one shim's scrape; Parallel the shims scraped at
	// a time. Zero means the defaults.
	ShimTimeout time.Duration
	Parallel    int

	// reg holds the monitor's own series, gathered after the shims'.
	reg       *prometheus.Registry
	sandboxes prometheus.Gauge
	failures  prometheus.Counter
	took      prometheus.Gauge
}

// Option configures a Monitor.
type Option func(*monitorOptions)

type monitorOptions struct {
	factory FactorySource
}

// WithFactorySource makes the monitor read a VM factory's status at each
// scrape and serve it (FactoryCollector): the hook the node's factory
// plugs into.
func WithFactorySource(src FactorySource) Option {
	return func(o *monitorOptions) { o.factory = src }
}

// NewMonitor returns a monitor of the sandboxes under stateRoot, which
// also serves the node's start counts there (package startcount).
func NewMonitor(stateRoot string, opts ...Option) (*Monitor, error) {
	var o monitorOptions
	for _, opt := range opts {
		opt(&o)
	}
	m := &Monitor{
		StateRoot: stateRoot,
		reg:       prometheus.NewRegistry(),
		sandboxes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hull_monitor_sandboxes", Help: "Sandboxes whose shim answered the last scrape."}),
		failures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "hull_monitor_shim_scrape_failures_total", Help: "Shim scrapes that failed or timed out."}),
		took:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "hull_monitor_scrape_duration_seconds", Help: "Duration of the last scrape of all shims."}),
	}
	own := []prometheus.Collector{m.sandboxes, m.failures, m.took, newStartsCollector(stateRoot)}
	if o.factory != nil {
		own = append(own, NewFactoryCollector(o.factory))
	}
	for _, c := range own {
		if err := m.reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Sockets lists the metrics sockets under the state root, one per sandbox
// directory, in name order.
func Sockets(stateRoot string) ([]string, error) {
	f, err := os.Open(stateRoot)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	ents, err := f.ReadDir(maxSandboxes)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(stateRoot, e.Name(), SocketName)
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Gather scrapes every shim and merges their families. A shim that fails
// or times out is left out of this scrape (and counted); its series go
// stale.
func (m *Monitor) Gather() ([]*dto.MetricFamily, error) {
	start := time.Now()
	out, err := m.gatherShims()
	if err != nil {
		return nil, err
	}
	m.took.Set(time.Since(start).Seconds())
	own, err := m.reg.Gather()
	return append(out, own...), err
}

func (m *Monitor) gatherShims() ([]*dto.MetricFamily, error) {
	socks, err := Sockets(m.StateRoot)
	if err != nil {
		return nil, fmt.Errorf("listing sandboxes: %w", err)
	}
	timeout, parallel := m.ShimTimeout, m.Parallel
	if timeout <= 0 {
		timeout = DefaultShimTimeout
	}
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	results := make([]map[string]*dto.MetricFamily, len(socks))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, sock := range socks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			fams, err := ScrapeShim(ctx, sock)
			if err != nil {
				m.failures.Inc()
				log.G(ctx).WithError(err).WithField("socket", sock).Debug("scraping a shim")
				return
			}
			results[i] = fams
		}()
	}
	wg.Wait()
	merged := map[string]*dto.MetricFamily{}
	answered := 0
	// Two shims never claim one sandbox label: the second is left out,
	// so that no series is exposed twice.
	claimed := map[string]bool{}
	for _, fams := range results {
		if fams == nil {
			continue
		}
		id := sandboxLabel(fams)
		if claimed[id] {
			m.failures.Inc()
			continue
		}
		claimed[id] = true
		answered++
		for name, f := range fams {
			if !strings.HasPrefix(name, metricPrefix) {
				continue
			}
			have, ok := merged[name]
			switch {
			case !ok:
				merged[name] = f
			case have.GetType() == f.GetType():
				have.Metric = append(have.Metric, f.Metric...)
			}
		}
	}
	m.sandboxes.Set(float64(answered))
	out := make([]*dto.MetricFamily, 0, len(merged))
	for _, name := range sortedKeys(merged) {
		out = append(out, merged[name])
	}
	return out, nil
}

// ScrapeShim reads the metric families of the shim serving sock.
func ScrapeShim(ctx context.Context, sock string) (map[string]*dto.MetricFamily, error) {
	resp, err := shimGet(ctx, sock, "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Close() }()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp, maxShimResponse))
	if err != nil {
		return nil, fmt.Errorf("shim at %s: %w", sock, err)
	}
	return fams, nil
}

// ShimInfo reads the /info answer of the shim serving sock.
func ShimInfo(ctx context.Context, sock string) (Info, error) {
	resp, err := shimGet(ctx, sock, "/info")
	if err != nil {
		return Info{}, err
	}
	defer func() { _ = resp.Close() }()
	var info Info
	if err := json.NewDecoder(io.LimitReader(resp, 1<<20)).Decode(&info); err != nil {
		return Info{}, fmt.Errorf("shim at %s: %w", sock, err)
	}
	return info, nil
}

func shimGet(ctx context.Context, sock, path string) (io.ReadCloser, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
		// A local socket: compressing costs both ends CPU for nothing.
		DisableCompression: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://shim"+path, nil)
	if err != nil {
		return nil, err
	}
	// Ask for the text format, which the parser reads.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("shim at %s: %w", sock, err)
	}
	if resp.StatusCode != http.StatusOK {
		_ = resp.Body.Close()
		return nil, fmt.Errorf("shim at %s: %s", sock, resp.Status)
	}
	return resp.Body, nil
}

// sandboxLabel is the sandbox label of a shim's series.
func sandboxLabel(fams map[string]*dto.MetricFamily) string {
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "sandbox" {
					return l.GetValue()
				}
			}
		}
	}
	return ""
}
