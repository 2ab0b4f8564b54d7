package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// otelcolCache is where the test collector is built, once per version of
// its sources (hack/otelcol): /var/cache/hull/otelcol-<hash>/otelcol.
const otelcolCache = "/var/cache/hull"

// otelcolSource is hack/otelcol in this tree.
func otelcolSource() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "hack", "otelcol")
}

// OtelcolBinary returns the test OpenTelemetry Collector (hack/otelcol: the
// collector's OTLP receiver and file exporter at the release its go.mod
// pins), building it from the Go module proxy into the cache when its
// sources changed (a few minutes the first time).
func OtelcolBinary(t testing.TB) string {
	t.Helper()
	src := otelcolSource()
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatalf("test collector sources: %v", err)
		}
		_, _ = fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	dir := filepath.Join(otelcolCache, "otelcol-"+hex.EncodeToString(h.Sum(nil))[:16])
	bin := filepath.Join(dir, "otelcol")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: a cache of public builds
		t.Fatal(err)
	}
	t.Logf("building the test collector from %s into %s", src, dir)
	tmp := bin + ".tmp"
	cmd := exec.Command("go", "build", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the test collector: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// Collector is a running test collector: OTLP over gRPC and HTTP on
// loopback ports, every span written to a file.
type Collector struct {
	// GRPC and HTTP are the receiver's endpoints as URLs.
	GRPC, HTTP string
	file       string
	cmd        *exec.Cmd
}

// StartCollector runs the test collector until the test ends.
func StartCollector(t testing.TB) *Collector {
	t.Helper()
	bin := OtelcolBinary(t)
	dir := t.TempDir()
	grpcPort, httpPort := freePort(t), freePort(t)
	c := &Collector{
		GRPC: fmt.Sprintf("http://127.0.0.1:%d", grpcPort),
		HTTP: fmt.Sprintf("http://127.0.0.1:%d", httpPort),
		file: filepath.Join(dir, "traces.jsonl"),
	}
	config := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%d
      http:
        endpoint: 127.0.0.1:%d
exporters:
  file:
    path: %s
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
`, grpcPort, httpPort, c.file)
	cfgPath := filepath.Join(dir, "otelcol.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "otelcol.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }()
	c.cmd = exec.Command(bin, "--config", cfgPath)
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		Stop(c.cmd, 10*time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("collector log:\n%s", b)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for _, port := range []int{grpcPort, httpPort} {
		for {
			conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
			if err == nil {
				_ = conn.Close()
				break
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("the collector does not listen on %d: %v\n%s", port, err, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return c
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// Span is a span as the collector's file exporter wrote it.
type Span struct {
	// Service is its resource's service.name, Resource all of its
	// resource's string attributes.
	Service  string
	Resource map[string]string
	TraceID  string
	SpanID   string
	ParentID string
	Name     string
	Attrs    map[string]string
}

// otlpJSON is the part of OTLP's JSON encoding Spans reads.
type otlpJSON struct {
	ResourceSpans []struct {
		Resource struct {
			Attributes []otlpKV `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []struct {
			Spans []struct {
				TraceID      string   `json:"traceId"`
				SpanID       string   `json:"spanId"`
				ParentSpanID string   `json:"parentSpanId"`
				Name         string   `json:"name"`
				Attributes   []otlpKV `json:"attributes"`
			} `json:"spans"`
		} `json:"scopeSpans"`
	} `json:"resourceSpans"`
}

type otlpKV struct {
	Key   string `json:"key"`
	Value struct {
		StringValue string `json:"stringValue"`
	} `json:"value"`
}

func kvMap(kvs []otlpKV) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value.StringValue
	}
	return m
}

// Spans returns every span the collector has written so far.
func (c *Collector) Spans(t testing.TB) []Span {
	t.Helper()
	f, err := os.Open(c.file)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var spans []Span
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	for sc.Scan() {
		var doc otlpJSON
		if err := json.Unmarshal(sc.Bytes(), &doc); err != nil {
			// The exporter may be writing the last line.
			continue
		}
		for _, rs := range doc.ResourceSpans {
			res := kvMap(rs.Resource.Attributes)
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					spans = append(spans, Span{
						Service: res["service.name"], Resource: res,
						TraceID: s.TraceID, SpanID: s.SpanID, ParentID: s.ParentSpanID,
						Name: s.Name, Attrs: kvMap(s.Attributes),
					})
				}
			}
		}
	}
	return spans
}
