package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/factory"
	"github.com/hull-runtime/hull/internal/podmetrics"
)

func newMonitorCommand(g *globalFlags) *cobra.Command {
	var (
		listen      string
		shimTimeout time.Duration
		parallel    int
	)
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Serve Prometheus metrics of every sandbox on this node",
		Long: "Serve the metrics of every running sandbox of the node on http://ADDR/metrics, in\n" +
			"Prometheus' text format: each scrape reads the metrics endpoint that every shim serves\n" +
			"in its sandbox's state directory (runtime.state_dir), in parallel, each within\n" +
			"--shim-timeout. Series are named hull_* and labelled with the sandbox and, for CRI\n" +
			"pods, pod_name, pod_namespace and pod_uid; the node's counts of sandbox and container\n" +
			"starts by result (hull_sandbox_starts_total, hull_container_starts_total) come from\n" +
			"the counts file every start updates in the state directory (docs/observability.md).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			m, err := podmetrics.NewMonitor(c.Runtime.StateDir, monitorOptions(c)...)
			if err != nil {
				return err
			}
			m.ShimTimeout, m.Parallel = shimTimeout, parallel
			mux := http.NewServeMux()
			mux.Handle("/metrics", promhttp.HandlerFor(m, promhttp.HandlerOpts{
				ErrorHandling:       promhttp.ContinueOnError,
				MaxRequestsInFlight: 4,
				Timeout:             shimTimeout + 10*time.Second,
			}))
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			log.G(ctx).WithField("address", l.Addr().String()).WithField("state_dir", c.Runtime.StateDir).Info("serving metrics")
			_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "hull monitor: serving http://%s/metrics\n", l.Addr())
			stop := context.AfterFunc(ctx, func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
			})
			defer stop()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9464", "address to serve /metrics on")
	cmd.Flags().DurationVar(&shimTimeout, "shim-timeout", podmetrics.DefaultShimTimeout, "bound of one shim's scrape")
	cmd.Flags().IntVar(&parallel, "parallel", podmetrics.DefaultParallel, "shims scraped at a time")
	return cmd
}

// monitorOptions are the monitor's sources beyond the node's sandboxes:
// with the VM factory on (factory.vm_cache), its status, read from its
// socket at each scrape (hull_factory_*).
func monitorOptions(c *config.Config) []podmetrics.Option {
	if c.Factory.VMCache == 0 {
		return nil
	}
	socket := c.Factory.Socket
	return []podmetrics.Option{podmetrics.WithFactorySource(func(ctx context.Context) (podmetrics.FactoryStatus, error) {
		cl, err := factory.Dial(ctx, socket)
		if err != nil {
			return podmetrics.FactoryStatus{}, err
		}
		defer func() { _ = cl.Close() }()
		st, err := cl.Status(ctx)
		if err != nil {
			return podmetrics.FactoryStatus{}, err
		}
		return podmetrics.FactoryStatus{
			Wanted: uint64(st.GetWanted()), Ready: uint64(st.GetReady()), Booting: uint64(st.GetBooting()),
			Hits: st.GetHits(), Misses: st.GetMisses(),
		}, nil
	})}
}
