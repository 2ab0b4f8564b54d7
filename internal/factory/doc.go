// Package factory is hull's VM factory (docs/factory.md): a pool of warm
// shims, each a containerd-shim-hull-v2 process holding a booted VM, which a
// starting shim claims instead of booting a VM of its own.
//
// The pieces, by file:
//   - pool.go: the pool, its refill and the cleanup of warm shims that
//     exit unclaimed; the pool owns the warm sandboxes' state until a claim.
//   - server.go: the factory's ttRPC service (Claim, Status) on its socket.
//   - exec.go: the warm shim process, started with a lifeline socket
//     whose end of file tells it the factory is gone.
//   - warm.go: the warm shim's side: its control socket, the lifeline,
//     waiting for a claim.
//   - handover.go: the hand-over on the control socket, in which the
//     claiming `shim start` passes the pod's listening shim socket (as
//     SCM_RIGHTS) with the shim server's parameters.
//   - client.go: what `shim start` and `hull factory status` call.
package factory
