package netpod

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tests need root, ip(8) and tc(8), /dev/net/tun and the kernel's
// veth, sch_ingress, cls_u32 and act_mirred. They fail, never skip, when
// something is missing. Everything they make lives in network namespaces
// named hull-netpod-<random>-*, deleted by t.Cleanup, and the traffic
// they send stays in 198.18.0.0/15 and fd00::/8 inside those namespaces.

const cmdTimeout = 10 * time.Second

// MACs of the test interfaces: locally administered, "HULL".
var (
	podMAC   = mustMAC("02:48:55:4c:00:02")
	peerMAC  = mustMAC("02:48:55:4c:00:01")
	pod1MAC  = mustMAC("02:48:55:4c:01:02")
	peer1MAC = mustMAC("02:48:55:4c:01:01")
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// testNS is a named network namespace the test made.
type testNS struct {
	name string
	path string
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNS makes a network namespace deleted when the test ends.
func newNS(t *testing.T, role string) *testNS {
	t.Helper()
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the netpod tests need %s(8) (iproute2): %v", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatalf("the netpod tests need root")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := &testNS{name: "hull-netpod-" + hex.EncodeToString(b) + "-" + role}
	ns.path = filepath.Join("/var/run/netns", ns.name)
	run(t, "ip", "netns", "add", ns.name)
	t.Cleanup(func() {
		if _, err := os.Lstat(ns.path); errors.Is(err, os.ErrNotExist) {
			return // removed by the test, as containerd does
		}
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("deleting network namespace %s: %v: %s", ns.name, err, out)
		}
	})
	return ns
}

func (ns *testNS) ip(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"-n", ns.name}, args...)...)
}

func (ns *testNS) tc(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "tc", append([]string{"-n", ns.name}, args...)...)
}

// open returns a handle on the namespace, closed when the test ends.
func (ns *testNS) open(t *testing.T) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromPath(ns.path)
	if err != nil {
		t.Fatalf("opening %s: %v", ns.path, err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// netlink returns an rtnetlink handle in the namespace, the tests' own view
// of it (not the package's code).
func (ns *testNS) netlink(t *testing.T) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.open(t), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", ns.name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// testPod is a pod namespace as CNI would leave it, wired to a peer
// namespace playing the host and the gateway:
//
//	pod: lo up; eth0 (veth, up, mtu 1450) 198.18.0.2/24 fd00::2/64;
//	     eth1 (veth, up) 198.18.1.2/24; eth2 (veth, down) 198.18.2.2/24;
//	     routes: default via 198.18.0.1, 198.18.200.1 dev eth0 scope link,
//	     198.19.0.0/16 via 198.18.0.1 src 198.18.0.2 metric 100,
//	     blackhole 198.19.99.0/24, 198.19.3.0/24 dev lo, default via fd00::1;
//	     neighbours: 198.18.0.1 and fd00::1 permanent, 198.18.0.9 stale.
//	peer: peer0 198.18.0.1/24 fd00::1/64 (eth0's other end); peer1
//	      198.18.1.1/24 (eth1's); peer2 (eth2's).
type testPod struct {
	ns, peer *testNS
}

func newPod(t *testing.T) *testPod {
	t.Helper()
	p := &testPod{ns: newNS(t, "pod"), peer: newNS(t, "peer")}
	pod, peer := p.ns, p.peer
	pod.ip(t, "link", "set", "lo", "up")
	peer.ip(t, "link", "set", "lo", "up")
	pod.ip(t, "link", "add", "eth0", "address", podMAC.String(), "mtu", "1450", "type", "veth",
		"peer", "name", "peer0", "address", peerMAC.String(), "mtu", "1450", "netns", peer.name)
	pod.ip(t, "link", "add", "eth1", "address", pod1MAC.String(), "type", "veth",
		"peer", "name", "peer1", "address", peer1MAC.String(), "netns", peer.name)
	pod.ip(t, "link", "add", "eth2", "type", "veth", "peer", "name", "peer2", "netns", peer.name)

	peer.ip(t, "addr", "add", "198.18.0.1/24", "dev", "peer0")
	peer.ip(t, "addr", "add", "fd00::1/64", "dev", "peer0", "nodad")
	peer.ip(t, "addr", "add", "198.18.1.1/24", "dev", "peer1")
	for _, l := range []string{"peer0", "peer1", "peer2"} {
		peer.ip(t, "link", "set", l, "up")
	}

	pod.ip(t, "addr", "add", "198.18.0.2/24", "dev", "eth0")
	pod.ip(t, "addr", "add", "fd00::2/64", "dev", "eth0", "nodad")
	pod.ip(t, "addr", "add", "198.18.1.2/24", "dev", "eth1")
	pod.ip(t, "addr", "add", "198.18.2.2/24", "dev", "eth2")
	for _, l := range []string{"eth0", "eth1", "eth2"} {
		pod.ip(t, "link", "set", l, "up")
	}
	pod.ip(t, "route", "add", "default", "via", "198.18.0.1")
	pod.ip(t, "route", "add", "198.18.200.1", "dev", "eth0", "scope", "link")
	pod.ip(t, "route", "add", "198.19.0.0/16", "via", "198.18.0.1", "src", "198.18.0.2", "metric", "100")
	pod.ip(t, "route", "add", "blackhole", "198.19.99.0/24")
	pod.ip(t, "route", "add", "198.19.3.0/24", "dev", "lo")
	pod.ip(t, "link", "set", "eth2", "down")
	pod.ip(t, "-6", "route", "add", "default", "via", "fd00::1")
	pod.ip(t, "neigh", "add", "198.18.0.1", "lladdr", peerMAC.String(), "dev", "eth0", "nud", "permanent")
	pod.ip(t, "-6", "neigh", "add", "fd00::1", "lladdr", peerMAC.String(), "dev", "eth0", "nud", "permanent")
	pod.ip(t, "neigh", "add", "198.18.0.9", "lladdr", "02:48:55:4c:00:09", "dev", "eth0", "nud", "stale")
	return p
}

// attach attaches p's namespace, closing the Network when the test ends.
func attach(t *testing.T, path string) *Network {
	t.Helper()
	n, err := Attach(context.Background(), path)
	if err != nil {
		t.Fatalf("Attach(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := n.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return n
}

// abandon drops n as a killed shim would: the descriptors close, nothing
// is removed.
func abandon(n *Network) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.mirrors {
		_ = m.tap.Close()
	}
	n.mirrors = nil
	n.h.Close()
	_ = n.ns.Close()
	n.closed = true
}

func linkByName(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// tapLinks are the names of the tap devices in the namespace.
func tapLinks(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	ls, err := h.LinkList()
	if err != nil {
		t.Fatalf("listing links: %v", err)
	}
	var names []string
	for _, l := range ls {
		if l.Type() == "tuntap" {
			names = append(names, l.Attrs().Name)
		}
	}
	return names
}

// ingressOf reports whether the link has an ingress qdisc, and the
// targets of the redirects of its ingress filters.
func ingressOf(t *testing.T, h *netlink.Handle, name string) (bool, []int) {
	t.Helper()
	l := linkByName(t, h, name)
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatalf("qdiscs of %s: %v", name, err)
	}
	found := false
	for _, q := range qs {
		if _, ok := q.(*netlink.Ingress); ok {
			found = true
		}
	}
	if !found {
		return false, nil
	}
	fs, err := h.FilterList(l, netlink.HANDLE_INGRESS)
	if err != nil {
		t.Fatalf("ingress filters of %s: %v", name, err)
	}
	var targets []int
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok {
			t.Fatalf("%s: unexpected %s filter %+v", name, f.Type(), f)
		}
		if u.Sel == nil {
			continue // the hash table node
		}
		if u.Sel.Flags&netlink.TC_U32_TERMINAL == 0 || len(u.Sel.Keys) != 1 || u.Sel.Keys[0].Mask != 0 {
			t.Errorf("%s: filter %+v is not match-all", name, u.Sel)
		}
		if f.Attrs().Protocol != unix.ETH_P_ALL {
			t.Errorf("%s: filter protocol %#x, want all", name, f.Attrs().Protocol)
		}
		for _, a := range u.Actions {
			m, ok := a.(*netlink.MirredAction)
			if !ok || m.MirredAction != netlink.TCA_EGRESS_REDIR || m.Attrs().Action != netlink.TC_ACT_STOLEN {
				t.Errorf("%s: action %+v is not an egress redirect", name, a)
				continue
			}
			targets = append(targets, m.Ifindex)
		}
	}
	return true, targets
}

// tapFlags returns the TUNGETIFF flags of a tap descriptor.
func tunFlags(t *testing.T, fd uintptr) uint16 {
	t.Helper()
	ifr, err := unix.NewIfreq("")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); err != nil {
		t.Fatalf("TUNGETIFF: %v", err)
	}
	return ifr.Uint16()
}

// vnetHdrLen is the size of the virtio_net_hdr a tap with IFF_VNET_HDR
// puts before each frame until told otherwise (TUNSETVNETHDRSZ).
const vnetHdrLen = 10

// readFrame reads frames from the tap descriptor until match accepts one
// (returned without its virtio-net header) or the timeout passes.
func readFrame(t *testing.T, fd uintptr, timeout time.Duration, what string, match func([]byte) bool) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	var seen int
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no %s read from the tap within %v (%d other frames)", what, timeout, seen)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll on the tap: %v", err)
		}
		if n == 0 {
			continue
		}
		n, err = unix.Read(int(fd), buf)
		if err != nil {
			t.Fatalf("reading the tap: %v", err)
		}
		if n < vnetHdrLen+14 {
			t.Fatalf("short read of %d bytes from the tap", n)
		}
		frame := buf[vnetHdrLen:n]
		if match(frame) {
			return append([]byte(nil), frame...)
		}
		seen++
	}
}

// writeFrame writes an Ethernet frame into the tap, behind a virtio-net
// header that asks for nothing.
func writeFrame(t *testing.T, fd uintptr, frame []byte) {
	t.Helper()
	b := append(make([]byte, vnetHdrLen), frame...)
	if n, err := unix.Write(int(fd), b); err != nil || n != len(b) {
		t.Fatalf("writing %d bytes into the tap: %d, %v", len(b), n, err)
	}
}
