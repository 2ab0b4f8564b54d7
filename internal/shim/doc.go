// Package shim is hull's containerd shim v2: the task API mapped onto the
// sandbox core, on containerd 1.7's shim library (runtime/v2/shim), which
// speaks task API v2 and answers `start` with a plain address: the one
// protocol containerd 1.6, 1.7 and 2.x all accept.
//
// One shim serves one pod: Manager.Start groups the containers of a sandbox
// (CRI's and CRI-O's sandbox annotations) on one socket, so they reach the
// same server, which runs one VM for them. The VM starts with the first
// container's create and stops with the last container's delete.
//
// Files, one concern each: manager.go (`start` and `delete`: grouping,
// spawning the server, cleaning up after a dead shim), service.go (the
// server, its plugin registration, create, start, delete, shutdown),
// task.go (the other task calls), process.go (processes, exits and waits),
// io.go (stdio: FIFOs, binary:// and file:// URIs), events.go (ordered
// event publishing), options.go (runtime options and configuration),
// record.go (the bundle record `delete` reads), spec.go (config.json and
// the sandbox grouping), stats.go (metrics), metrics.go (the sandbox's
// Prometheus endpoint, podmetrics), errors.go (the ttRPC error boundary).
package shim
