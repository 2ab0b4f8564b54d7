// Package podmetrics measures sandboxes for Prometheus.
//
// Each shim serves its sandbox's metrics on a unix socket in the sandbox's
// state directory (SocketName): HTTP with the Prometheus text exposition on
// /metrics and a JSON summary on /info (`hull list`). The Collector behind
// it reads the host side from /proc and the sandbox's cgroup, and the guest
// side through one agent call (GuestMetrics, which reads /proc in the agent
// process) and the containers' statistics, cached for a few seconds so that
// scrapes never drive the guest faster than that.
//
// The Monitor (`hull monitor`) finds the sandboxes of a node by listing the
// state root, scrapes every shim's socket in parallel with a bound and a
// per-shim timeout, and serves the merged families, with the node's start
// counts (package startcount) and, given a source, a VM factory's status.
//
// The guest's numbers are untrusted: they only ever become sample values
// and, sanitized and bounded in length and count, label values of labels
// this package names (interface, device). Pod labels come from the pod's
// annotations, which cluster users write, and are bounded the same way.
//
// Files: proc.go (host processes), collector.go (one sandbox's metrics),
// labels.go (label values from untrusted input), sandbox.go (a running
// sandbox as a Source), server.go (the shim's endpoint), monitor.go (the
// node's scraper), starts.go (the node's start counts), factory.go (a VM
// factory's pool and claims).
package podmetrics
