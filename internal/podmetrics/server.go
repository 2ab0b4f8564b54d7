package podmetrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// SocketName is the metrics endpoint's unix socket in a sandbox's state
// directory.
const SocketName = "metrics.sock"

// Info is what /info tells of a sandbox (`hull list`).
type Info struct {
	Sandbox      string `json:"sandbox"`
	PodName      string `json:"pod_name,omitempty"`
	PodNamespace string `json:"pod_namespace,omitempty"`
	PodUID       string `json:"pod_uid,omitempty"`
	// VMMPID is the hypervisor's host PID.
	VMMPID    int    `json:"vmm_pid"`
	VCPUs     uint32 `json:"vcpus"`
	MemoryMiB uint32 `json:"memory_mib"`
	// Containers are the sandbox's containers, by ID.
	Containers []string `json:"containers"`
}

// Server serves one sandbox's metrics on its socket.
type Server struct {
	path string
	srv  *http.Server
	done chan struct{}
}

// Serve serves the collector's series on /metrics and info's answer on
// /info, on SocketName in the state directory dir; only the socket's owner
// (root) may connect.
func Serve(dir string, c *Collector, info func() Info) (*Server, error) {
	path := filepath.Join(dir, SocketName)
	_ = os.Remove(path) // a stale socket of an earlier shim
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		_ = l.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Timeout: 10 * time.Second}))
	mux.HandleFunc("/info", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(info())
	})
	s := &Server{
		path: path,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 15 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(l)
	}()
	return s, nil
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}
