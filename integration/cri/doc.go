// Package cri is hull's end-to-end suite against containerd's CRI plugin,
// driven the way the kubelet drives it: through the CRI gRPC API
// (k8s.io/cri-api runtime/v1) on containerd's socket. It runs pods with
// runtime handler "hull" (io.containerd.hull.v2) and, as the reference the
// harness is checked against, "runc" (io.containerd.runc.v2), on Debian's
// containerd 1.6 and on a containerd 2.x built from source.
//
// Each daemon is an isolated instance under a temporary directory with its
// own CNI network (the bridge, host-local and loopback plugins of
// containernetworking-plugins: a test-specific bridge and a /24 of
// 198.18.0.0/15), and the images are built locally (internal/ociimage): no
// registry is involved. After every case it checks that nothing is left:
// no pod, container, VM, virtiofsd or shim process, mount, network
// namespace, tap or veth device, CNI or IPAM state, or pod cgroup.
package cri
