// Package ociruntime is hull-runtime: an OCI runtime with runc's command
// line (create, start, state, kill, delete, exec, ps, pause, resume,
// update, features) for container managers that drive runc directly or
// through containerd's runc shim and conmon: Docker, Podman and nerdctl.
//
// Each container runs in a VM of its own, booted by the sandbox core. A
// command of runc's line is short-lived, while the VM must outlive it:
// `create` forks a supervisor, a detached process (its own session) that
// owns the sandbox (VM, virtiofsd, shared tree, pod network mirror) and
// the container's stdio, and stands for the workload on the host. Its PID
// is what --pid-file receives and what `state` reports: the container
// manager waits for it as it would for runc's container init, and the
// supervisor exits with the workload's status (its exit code, or 128 + the
// signal that ended it) once the VM is torn down. Signals sent to the
// supervisor's PID are forwarded to the workload. Later commands reach the
// supervisor through a unix socket in the container's state directory
// (<root>/<id>/sock) with a small protocol of JSON messages that can carry
// file descriptors (an exec's stdio).
//
// An exec has a stand-in of its own: a host process that carries the
// exec's stdio and signals and exits with its status (with --detach, a
// detached child of `hull-runtime exec` whose PID goes to --pid-file).
//
// The hooks of the bundle's config.json that belong to the runtime
// namespace (prestart, createRuntime, createContainer, poststart,
// poststop) run on the host with the state runc gives them, the
// supervisor's PID standing for the container; startContainer hooks run
// in the guest. When the spec asks for a new network namespace, the
// supervisor is created in one, so that a hook that sets up networking in
// /proc/<pid>/ns/net (Docker's libnetwork, nerdctl's CNI hook) fills the
// namespace that the VM then mirrors.
package ociruntime
