// Package tracing is hull's OpenTelemetry tracing on the host: the exporter
// to the configured OTLP collector, and the checks and conversion that let
// the spans an agent recorded in its guest join the host's traces.
//
// Trace context crosses every ttRPC hop (containerd to the shim, the shim to
// the agent) as a W3C traceparent in the call's metadata
// (github.com/containerd/otelttrpc). The guest's spans come back through
// the agent connection (the agent's Tracing service); the host treats them
// as untrusted input: see Guest.
package tracing
