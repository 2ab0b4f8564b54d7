// Package netpod mirrors a pod's network namespace into its VM, the model
// Kata Containers calls "tcfilter": no bridge, no iptables, no address on
// the host side.
//
// containerd's CRI creates the pod's network namespace and has CNI set it
// up, typically with one veth (eth0) carrying the pod's addresses and
// routes. Attach then, inside that namespace and for each interface that
// carries the pod network:
//
//   - creates a tap device (tap0_hull, tap1_hull, ...) with IFF_TAP,
//     IFF_NO_PI and IFF_VNET_HDR, single queue, not persistent, with the
//     interface's MTU, and keeps its file descriptor for the hypervisor;
//   - adds an ingress qdisc to the interface and to the tap, and on each a
//     u32 match-all filter whose action is "mirred egress redirect" to the
//     other one.
//
// Every frame that arrives on the veth thus leaves through the tap to the
// VM, and every frame the VM writes into the tap leaves through the veth.
// The guest's virtio-net device takes the veth's MAC address, and the guest
// agent gives it the veth's name, MTU, addresses, routes and permanent
// neighbours (Request); the namespace's own stack keeps its configuration
// but no longer receives anything on the mirrored interfaces.
//
// Interfaces that are left alone: loopback, links that are down, ports of
// another device (a bridge or bond master carries the network instead),
// links without an Ethernet address (a tap carries Ethernet frames), and
// the taps this package made.
//
// Facts this package relies on:
//
//   - A tap belongs to the network namespace of the thread that opened
//     /dev/net/tun, so the tap (and, for the same reason, the rtnetlink
//     socket) is made on a goroutine locked to an OS thread that entered
//     the namespace with setns(2). A thread whose namespace cannot be
//     restored is never unlocked: the Go runtime ends it with the
//     goroutine instead of reusing it.
//   - The tap is not persistent: it disappears when the last descriptor
//     on it closes, ours or the hypervisor's copy. The ingress qdiscs on
//     the other interfaces stay until removed; a redirect whose tap is
//     gone drops frames.
//   - QEMU's tap netdev with fds= probes IFF_VNET_HDR on the descriptor and
//     sets the header size itself; frames read from or written to the
//     descriptor before that carry a 10-byte virtio_net_hdr.
//   - Holding the descriptors (taps and netlink socket) keeps the
//     namespace alive after containerd unmounted it, so Close can always
//     undo what Attach made.
//
// Cleanup is for a Network whose owner died without Close: it removes the
// taps named by this package's pattern and the ingress qdiscs whose
// filters only redirect to such taps (or to taps already gone).
package netpod
