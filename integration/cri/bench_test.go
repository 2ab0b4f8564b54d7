package cri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// BenchmarkCRIPodStart times the kubelet's start of a one-container pod,
// from RunPodSandbox until StartContainer returns (the container then
// runs), with hull and with runc on the same daemon, alternating the two;
// medians over -benchtime Nx runs each (make bench uses 5). Each pod is
// then stopped and removed, untimed, and must leave nothing. Debian's
// containerd 1.6 is the daemon.
func BenchmarkCRIPodStart(b *testing.B) {
	d := startDaemon(b, "1.6")
	times := map[string][]time.Duration{}
	for i := 0; b.Loop(); i++ {
		for _, h := range handlers {
			s := d.session(b, h)
			config := s.podConfig(fmt.Sprintf("start-%s-%d", h.name, i))
			start := time.Now()
			st, err := s.runPodSandbox(config, h.name)
			if err != nil {
				s.fail(st.logFrom, "RunPodSandbox with handler %s: %v", h.name, err)
			}
			p := &pod{s: s, id: st.id, config: config}
			id := p.run(containerConfig("c", untilTerm("true")...))
			times[h.name] = append(times[h.name], time.Since(start))
			if cs := p.containerStatus(id); cs.State != runtime.ContainerState_CONTAINER_RUNNING {
				b.Fatalf("%s: after StartContainer: %v", h.name, cs.State)
			}
			p.stop()
			p.remove()
			s.checkClean()
		}
	}
	for _, h := range handlers {
		b.ReportMetric(float64(medianOf(times[h.name]).Milliseconds()), h.name+"-ms")
		b.Logf("pod start, %s: %v", h.name, times[h.name])
	}
}

// transferMiB is what BenchmarkCRINetwork moves each way per run.
const transferMiB = 32

// BenchmarkCRINetwork measures TCP throughput between the host and a pod
// at its IP, with hull and with runc (both pods on one daemon, alternating):
// pod-to-host is an HTTP GET of a transferMiB file that busybox httpd
// serves from the container's /dev/shm; host-to-pod is transferMiB written
// to busybox nc listening in the container, timed until nc has read it all
// and closed. Medians over -benchtime Nx runs (make bench uses 5), in MB/s
// (10^6 bytes). Debian's containerd 1.6 is the daemon.
func BenchmarkCRINetwork(b *testing.B) {
	d := startDaemon(b, "1.6")
	type target struct {
		h             handler
		s             *session
		p             *pod
		get, put      []float64
		url, sinkAddr string
	}
	var targets []*target
	for _, h := range handlers {
		s := d.session(b, h)
		p := s.runPod("net-" + h.name)
		// nc's stdin is a FIFO opened read-write: never data, never EOF, so
		// nc ends only when the host's side closes, after reading it all.
		p.run(containerConfig("server", untilTerm(fmt.Sprintf(
			`mkdir -p /dev/shm/www && dd if=/dev/zero of=/dev/shm/www/blob bs=1M count=%d 2>/dev/null && httpd -p 8080 -h /dev/shm/www && `+
				`mkfifo /tmp/hold && { while :; do nc -l -p 9000 >/dev/null <>/tmp/hold; done & }`, transferMiB))...))
		t := &target{h: h, s: s, p: p, url: fmt.Sprintf("http://%s:8080/blob", p.ip), sinkAddr: net.JoinHostPort(p.ip, "9000")}
		// Warm up (and wait for httpd): one full fetch.
		if _, err := httpGet(t.url, 2*time.Minute); err != nil {
			b.Fatalf("%s: %v", h.name, err)
		}
		targets = append(targets, t)
	}
	const size = transferMiB << 20
	for b.Loop() {
		for _, t := range targets {
			get, err := download(t.url, size)
			if err != nil {
				b.Fatalf("%s: pod to host: %v", t.h.name, err)
			}
			put, err := upload(t.sinkAddr, size)
			if err != nil {
				b.Fatalf("%s: host to pod: %v", t.h.name, err)
			}
			t.get = append(t.get, float64(size)/1e6/get.Seconds())
			t.put = append(t.put, float64(size)/1e6/put.Seconds())
		}
	}
	for _, t := range targets {
		b.ReportMetric(medianOf(t.get), t.h.name+"-pod-to-host-MB/s")
		b.ReportMetric(medianOf(t.put), t.h.name+"-host-to-pod-MB/s")
		b.Logf("%s: pod to host %s MB/s; host to pod %s MB/s", t.h.name, formatRates(t.get), formatRates(t.put))
		t.p.stop()
		t.p.remove()
	}
	// Both pods are gone: only now may the daemon be clean.
	targets[0].s.checkClean()
}

// download fetches url and checks that it is size bytes long.
func download(url string, size int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }() // read to the end below
	n, err := io.Copy(io.Discard, resp.Body)
	elapsed := time.Since(start)
	if err == nil && n != size {
		err = fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
	}
	return elapsed, err
}

// upload writes size bytes to addr and waits until the peer has read them
// all and closed the connection. The listener restarts between runs, so
// the dial is retried for a while.
func upload(addr string, size int) (time.Duration, error) {
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; {
		conn, err = net.DialTimeout("tcp", addr, 3*time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	defer func() { _ = conn.Close() }() // done with it either way
	if err := conn.SetDeadline(time.Now().Add(2 * time.Minute)); err != nil {
		return 0, err
	}
	chunk := bytes.Repeat([]byte{0}, 1<<20)
	start := time.Now()
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := conn.Write(chunk[:min(len(chunk), size-sent)]); err != nil {
			return 0, err
		}
	}
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		return 0, errors.New("not a TCP connection")
	}
	if err := tcp.CloseWrite(); err != nil {
		return 0, err
	}
	switch n, err := io.Copy(io.Discard, conn); {
	case err != nil:
		return 0, fmt.Errorf("waiting for the peer to close: %w", err)
	case n != 0:
		return 0, fmt.Errorf("waiting for the peer to close: %d bytes back", n)
	}
	return time.Since(start), nil
}

func medianOf[T time.Duration | float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func formatRates(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.1f", r)
	}
	return strings.Join(parts, " ")
}

// BenchmarkCRITracing measures what tracing costs a pod start: a CRI
// RunPodSandbox and one container started, as BenchmarkCRIPodStart does,
// on two containerd 2.x daemons, one with tracing off everywhere and one
// with containerd's and hull's tracing on, exporting to a real collector
// (alternating pod by pod). Medians, in ms.
func BenchmarkCRITracing(b *testing.B) {
	col := e2e.StartCollector(b)
	modes := []struct {
		name string
		d    *daemon
	}{
		{"tracing-off", startDaemon(b, "2")},
		{"tracing-on", startDaemonWith(b, "2", tracingOptions(col))},
	}
	times := map[string][]time.Duration{}
	for i := 0; b.Loop(); i++ {
		for _, m := range modes {
			s := m.d.session(b, hull)
			config := s.podConfig(fmt.Sprintf("trace-%s-%d", m.name, i))
			start := time.Now()
			st, err := s.runPodSandbox(config, hull.name)
			if err != nil {
				s.fail(st.logFrom, "RunPodSandbox (%s): %v", m.name, err)
			}
			p := &pod{s: s, id: st.id, config: config}
			p.run(containerConfig("c", untilTerm("true")...))
			times[m.name] = append(times[m.name], time.Since(start))
			p.stop()
			p.remove()
			s.checkClean()
		}
	}
	for _, m := range modes {
		b.ReportMetric(float64(medianOf(times[m.name]).Milliseconds()), m.name+"-ms")
		b.Logf("pod start, %s: %v", m.name, times[m.name])
	}
}
