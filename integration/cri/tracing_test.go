package cri

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// Span names the trace of a pod start holds.
const (
	criRunSpan      = "cri.sandbox.run" // containerd's RunPodSandbox
	shimCreateSpan  = "containerd.task.v2.Task/Create"
	sandboxSpan     = "sandbox start"
	guestCreateSbox = "hull.agent.v1.Containers/CreateSandbox"
	guestCreateCtr  = "hull.agent.v1.Containers/CreateContainer"
)

// bootSteps are sandbox steps whose spans a pod start must show.
var bootSteps = []string{"create vm", "start vm", "connect to agent", "set guest time", "create guest sandbox"}

// TestCRITracing starts one pod through containerd 2.x's CRI with tracing
// on in containerd and in hull, both exporting over OTLP to a real
// OpenTelemetry Collector (hack/otelcol), and checks that one trace holds
// the CRI's RunPodSandbox span, the shim's Create under it, the sandbox's
// boot steps under that, and the agent's spans from inside the guest, each
// under the host's call that carried its context.
func TestCRITracing(t *testing.T) {
	hull.need(t)
	col := e2e.StartCollector(t)
	d := startDaemonWith(t, "2", tracingOptions(col))
	s := d.begin(t, hull)
	p := s.runPod("traced")
	// Stopping the pod ends the shim, which sends its last spans.
	p.stop()
	p.remove()

	var (
		traceID string
		err     error
	)
	deadline := time.Now().Add(time.Minute)
	for {
		if traceID, err = checkPodTrace(col.Spans(t)); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		var b strings.Builder
		for _, s := range col.Spans(t) {
			fmt.Fprintf(&b, "  %s %s trace %s span %s parent %s\n", s.Service, s.Name, s.TraceID, s.SpanID, s.ParentID)
		}
		t.Fatalf("%v\nspans the collector got:\n%s", err, b.String())
	}
	// The shim's log (in containerd's) names the pod's container and the
	// trace of its Create.
	logged := false
	for _, line := range strings.Split(d.logTail(100000), "\n") {
		if strings.Contains(line, "sandbox started") && strings.Contains(line, "container="+p.id) && strings.Contains(line, "trace_id="+traceID) {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no shim log line \"sandbox started\" with container=%s and trace_id=%s in containerd's log", p.id, traceID)
	}
}

// checkPodTrace finds the trace of the pod start among spans, checks its
// shape and returns its ID.
func checkPodTrace(spans []e2e.Span) (string, error) {
	byID := map[string]e2e.Span{}
	for _, s := range spans {
		byID[s.SpanID] = s
	}
	// under reports whether s descends from the span ancestor.
	under := func(s e2e.Span, ancestor string) bool {
		for i := 0; i < 64 && s.ParentID != ""; i++ {
			if s.ParentID == ancestor {
				return true
			}
			p, ok := byID[s.ParentID]
			if !ok {
				return false
			}
			s = p
		}
		return false
	}
	find := func(service, name string, ok func(e2e.Span) bool) (e2e.Span, bool) {
		for _, s := range spans {
			if s.Service == service && s.Name == name && ok(s) {
				return s, true
			}
		}
		return e2e.Span{}, false
	}
	run, ok := find("containerd", criRunSpan, func(e2e.Span) bool { return true })
	if !ok {
		return "", errors.New("no span " + criRunSpan + " from containerd")
	}
	inTrace := func(s e2e.Span) bool { return s.TraceID == run.TraceID }
	create, ok := find("containerd-shim-hull-v2", shimCreateSpan, func(s e2e.Span) bool { return inTrace(s) && under(s, run.SpanID) })
	if !ok {
		return "", fmt.Errorf("no shim span %s under containerd's %s (trace %s)", shimCreateSpan, criRunSpan, run.TraceID)
	}
	start, ok := find("containerd-shim-hull-v2", sandboxSpan, func(s e2e.Span) bool { return s.ParentID == create.SpanID })
	if !ok {
		return "", fmt.Errorf("no span %q under the shim's Create", sandboxSpan)
	}
	steps := map[string]e2e.Span{}
	for _, name := range bootSteps {
		st, ok := find("containerd-shim-hull-v2", name, func(s e2e.Span) bool { return s.ParentID == start.SpanID })
		if !ok {
			return "", fmt.Errorf("no boot step span %q under %q", name, sandboxSpan)
		}
		steps[name] = st
	}
	// The guest's CreateSandbox: under the host's client span of that
	// call, itself under the boot step that made it.
	guest, ok := find("hull-agent", guestCreateSbox, func(s e2e.Span) bool { return inTrace(s) })
	if !ok {
		return "", fmt.Errorf("no guest span %s in the trace", guestCreateSbox)
	}
	client, ok := byID[guest.ParentID]
	if !ok || client.Service != "containerd-shim-hull-v2" || client.Name != guestCreateSbox || client.ParentID != steps["create guest sandbox"].SpanID {
		return "", fmt.Errorf("the guest's %s has parent %+v, want the shim's client span of the call under the step \"create guest sandbox\"", guestCreateSbox, client)
	}
	if id := guest.Resource["hull.sandbox.id"]; id == "" || id != start.Attrs["hull.sandbox.id"] {
		return "", fmt.Errorf("the guest span's resource names sandbox %q, the sandbox span %q", id, start.Attrs["hull.sandbox.id"])
	}
	// The pause container, created in the guest within the same Create.
	if _, ok := find("hull-agent", guestCreateCtr, func(s e2e.Span) bool { return inTrace(s) && under(s, create.SpanID) }); !ok {
		return "", fmt.Errorf("no guest span %s under the shim's Create", guestCreateCtr)
	}
	return run.TraceID, nil
}

// tracingOptions turn tracing on in containerd 2.x and in hull, both
// exporting to col.
func tracingOptions(col *e2e.Collector) daemonOptions {
	return daemonOptions{
		hullConfig: fmt.Sprintf("[tracing]\nenabled = true\nendpoint = %q\nprotocol = \"grpc\"\n", col.GRPC),
		// containerd 2.x's tracing is configured by the OTel variables
		// (OTLP/HTTP by default).
		env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + col.HTTP, "OTEL_SERVICE_NAME=containerd"},
	}
}
