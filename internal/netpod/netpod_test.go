package netpod

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestAttach(t *testing.T) {
	p := newPod(t)
	n := attach(t, p.ns.path)
	h := p.ns.netlink(t)

	if got, want := tapLinks(t, h), []string{"tap0_hull", "tap1_hull"}; !slices.Equal(got, want) {
		t.Fatalf("taps %q, want %q", got, want)
	}
	pairs := []struct{ iface, tap string }{{"eth0", "tap0_hull"}, {"eth1", "tap1_hull"}}
	devs := n.Devices()
	if len(devs) != len(pairs) {
		t.Fatalf("%d devices, want %d: %+v", len(devs), len(pairs), devs)
	}
	for i, pair := range pairs {
		t.Run(pair.iface, func(t *testing.T) {
			iface, tap := linkByName(t, h, pair.iface), linkByName(t, h, pair.tap)
			tt, ok := tap.(*netlink.Tuntap)
			if !ok {
				t.Fatalf("%s is a %s, want a tuntap", pair.tap, tap.Type())
			}
			if tt.Mode != netlink.TUNTAP_MODE_TAP || !tt.NonPersist || tt.Flags&netlink.TUNTAP_VNET_HDR == 0 {
				t.Errorf("%s: mode %v, non-persistent %v, flags %#x; want a non-persistent tap with vnet_hdr", pair.tap, tt.Mode, tt.NonPersist, tt.Flags)
			}
			if tap.Attrs().MTU != iface.Attrs().MTU {
				t.Errorf("%s MTU %d, want %s's %d", pair.tap, tap.Attrs().MTU, pair.iface, iface.Attrs().MTU)
			}
			if tap.Attrs().Flags&unix.IFF_UP == 0 {
				t.Errorf("%s is down", pair.tap)
			}
			// Not even an IPv6 link-local one: the namespace's stack must
			// not talk to the guest.
			if as, err := h.AddrList(tap, netlink.FAMILY_ALL); err != nil || len(as) != 0 {
				t.Errorf("%s has addresses %v (%v)", pair.tap, as, err)
			}
			for _, c := range []struct {
				from string
				to   netlink.Link
			}{{pair.iface, tap}, {pair.tap, iface}} {
				ok, targets := ingressOf(t, h, c.from)
				if !ok || !slices.Equal(targets, []int{c.to.Attrs().Index}) {
					t.Errorf("%s: ingress %v, redirects to %v; want one redirect to %s (%d)", c.from, ok, targets, c.to.Attrs().Name, c.to.Attrs().Index)
				}
			}

			d := devs[i]
			want := hypervisor.NetworkDevice{ID: pair.iface, TapName: pair.tap, FDs: d.FDs, MAC: iface.Attrs().HardwareAddr.String(), MTU: uint32(iface.Attrs().MTU)}
			if len(d.FDs) != 1 || d.ID != want.ID || d.TapName != want.TapName || d.MAC != want.MAC || d.MTU != want.MTU {
				t.Fatalf("device %+v, want %+v with one fd", d, want)
			}
			flags := tunFlags(t, d.FDs[0])
			const want16 = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
			if flags&(want16|unix.IFF_TUN|unix.IFF_MULTI_QUEUE) != want16 {
				t.Errorf("tap fd flags %#x, want tap, no_pi, vnet_hdr, single queue", flags)
			}
		})
	}
	if ok, _ := ingressOf(t, h, "eth2"); ok {
		t.Errorf("eth2 (down) got an ingress qdisc")
	}
	if ok, _ := ingressOf(t, h, "lo"); ok {
		t.Errorf("lo got an ingress qdisc")
	}

	want := &agent.ConfigureNetworkRequest{
		Interfaces: []*agent.Interface{
			{Name: "eth0", Mac: podMAC.String(), Mtu: 1450, Addresses: []string{"198.18.0.2/24", "fd00::2/64"}},
			{Name: "eth1", Mac: pod1MAC.String(), Mtu: 1500, Addresses: []string{"198.18.1.2/24"}},
		},
		Routes: []*agent.Route{
			{Destination: "198.18.200.1/32", Device: "eth0", Scope: unix.RT_SCOPE_LINK, Family: 4},
			{Gateway: "198.18.0.1", Device: "eth0", Family: 4},
			{Destination: "198.19.0.0/16", Gateway: "198.18.0.1", Source: "198.18.0.2", Device: "eth0", Metric: 100, Family: 4},
			{Gateway: "fd00::1", Device: "eth0", Metric: 1024, Family: 6},
		},
		Neighbors: []*agent.Neighbor{
			{Ip: "198.18.0.1", Mac: peerMAC.String(), Device: "eth0"},
			{Ip: "fd00::1", Mac: peerMAC.String(), Device: "eth0"},
		},
	}
	got := n.Request()
	if !proto.Equal(got, want) {
		t.Fatalf("Request:\n%s\nwant:\n%s", prototext.Format(got), prototext.Format(want))
	}
	got.Dns = &agent.DNS{Servers: []string{"198.18.0.53"}}
	got.Interfaces[0].Name = "changed"
	if again := n.Request(); !proto.Equal(again, want) {
		t.Errorf("Request after changing an earlier result:\n%s", prototext.Format(again))
	}
}

func TestAttachEmptyNamespace(t *testing.T) {
	ns := newNS(t, "empty")
	ns.ip(t, "link", "set", "lo", "up")
	n := attach(t, ns.path)
	if d := n.Devices(); len(d) != 0 {
		t.Errorf("Devices %+v, want none", d)
	}
	if r := n.Request(); !proto.Equal(r, &agent.ConfigureNetworkRequest{}) {
		t.Errorf("Request %s, want empty", prototext.Format(r))
	}
	if taps := tapLinks(t, ns.netlink(t)); len(taps) != 0 {
		t.Errorf("taps %q in an empty namespace", taps)
	}
}

func TestAttachErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		path string
		is   func(error) bool
	}{
		{"missing", "/var/run/netns/hull-netpod-does-not-exist", errdefs.IsNotFound},
		{"empty path", "", errdefs.IsInvalidArgument},
		{"regular file", file, errdefs.IsInvalidArgument},
		{"not a network namespace", "/proc/self/ns/uts", errdefs.IsInvalidArgument},
		// Mirroring it would redirect the host's own traffic.
		{"the runtime's own network namespace", "/proc/self/ns/net", errdefs.IsInvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := Attach(context.Background(), c.path)
			if err == nil {
				_ = n.Close(context.Background())
				t.Fatalf("Attach(%q) succeeded", c.path)
			}
			if !c.is(err) {
				t.Errorf("Attach(%q): %v: wrong class", c.path, err)
			}
		})
	}

	t.Run("own namespace allowed, the host's still refused", func(t *testing.T) {
		// The test runs in the host's namespace: OwnNamespace lifts the
		// check of the runtime's own, never that of init's.
		n, err := Attach(context.Background(), "/proc/1/ns/net", OwnNamespace())
		if err == nil {
			_ = n.Close(context.Background())
			t.Fatal("Attach of init's namespace with OwnNamespace succeeded")
		}
		// Where init's namespace cannot be opened at all (a sandboxed
		// init), that refuses it too.
		if !errdefs.IsInvalidArgument(err) && !errdefs.IsPermissionDenied(err) {
			t.Errorf("Attach: %v: wrong class", err)
		}
		// A namespace of a pod is no one's own: mirrored either way.
		p := newPod(t)
		n, err = Attach(context.Background(), p.ns.path, OwnNamespace())
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("rollback", func(t *testing.T) {
		// eth1 already has an ingress qdisc (someone else's): eth0's
		// mirror, made first, must be undone and eth1's qdisc kept.
		p := newPod(t)
		p.ns.tc(t, "qdisc", "add", "dev", "eth1", "ingress")
		_, err := Attach(context.Background(), p.ns.path)
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Attach: %v, want already exists", err)
		}
		h := p.ns.netlink(t)
		if taps := tapLinks(t, h); len(taps) != 0 {
			t.Errorf("taps %q left behind", taps)
		}
		if ok, _ := ingressOf(t, h, "eth0"); ok {
			t.Errorf("eth0's ingress qdisc left behind")
		}
		if ok, _ := ingressOf(t, h, "eth1"); !ok {
			t.Errorf("eth1's own ingress qdisc removed")
		}
	})

	t.Run("more interfaces than the vm has slots for: no tap made", func(t *testing.T) {
		p := newPod(t)
		_, err := Attach(context.Background(), p.ns.path, MaxInterfaces(1))
		if !errdefs.IsResourceExhausted(err) {
			t.Fatalf("Attach: %v, want resource exhausted", err)
		}
		h := p.ns.netlink(t)
		if taps := tapLinks(t, h); len(taps) != 0 {
			t.Errorf("taps %q left behind", taps)
		}
		for _, l := range []string{"eth0", "eth1"} {
			if ok, _ := ingressOf(t, h, l); ok {
				t.Errorf("%s's ingress qdisc left behind", l)
			}
		}
		n, err := Attach(context.Background(), p.ns.path, MaxInterfaces(3))
		if err != nil {
			t.Fatalf("Attach within the bound: %v", err)
		}
		if err := n.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Attach(ctx, newNS(t, "canceled").path); !errors.Is(err, context.Canceled) {
			t.Errorf("Attach with a canceled context: %v", err)
		}
	})
}

func TestClose(t *testing.T) {
	for _, c := range []struct {
		name   string
		before func(t *testing.T, p *testPod)
	}{
		{"plain", func(*testing.T, *testPod) {}},
		// CNI DEL deleted the veth before the shim closed.
		{"veth gone", func(t *testing.T, p *testPod) { p.ns.ip(t, "link", "del", "eth0") }},
		// containerd removed the namespace (unmount, then remove the
		// file); the descriptors keep it alive.
		{"namespace removed", func(t *testing.T, p *testPod) {
			if err := unix.Unmount(p.ns.path, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(p.ns.path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPod(t)
			h := p.ns.netlink(t) // keeps the namespace reachable for the checks
			n, err := Attach(context.Background(), p.ns.path)
			if err != nil {
				t.Fatal(err)
			}
			var taps []*os.File
			for _, m := range n.mirrors {
				taps = append(taps, m.tap)
			}
			c.before(t, p)
			if err := n.Close(context.Background()); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := n.Close(context.Background()); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if d := n.Devices(); d != nil {
				t.Errorf("Devices after Close: %+v", d)
			}
			if taps := tapLinks(t, h); len(taps) != 0 {
				t.Errorf("taps %q left", taps)
			}
			for _, l := range []string{"eth0", "eth1"} {
				if _, err := h.LinkByName(l); err != nil {
					continue // deleted by the test
				}
				if ok, _ := ingressOf(t, h, l); ok {
					t.Errorf("%s keeps an ingress qdisc", l)
				}
			}
			for _, f := range taps {
				if err := f.Close(); !errors.Is(err, os.ErrClosed) {
					t.Errorf("tap descriptor %s not closed by Close", f.Name())
				}
			}
		})
	}
}

func TestCleanup(t *testing.T) {
	for _, c := range []struct {
		name string
		// holdTaps keeps copies of the tap descriptors, as a QEMU that
		// outlived the shim would.
		holdTaps bool
	}{
		{"taps closed", false},
		{"taps held", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPod(t)
			h := p.ns.netlink(t)
			n, err := Attach(context.Background(), p.ns.path)
			if err != nil {
				t.Fatal(err)
			}
			if c.holdTaps {
				for _, d := range n.Devices() {
					fd, err := unix.Dup(int(d.FDs[0]))
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = unix.Close(fd) })
				}
			}
			abandon(n)
			// Filters that are not ours, on interfaces Attach did not
			// touch: a redirect to a live interface, a mirror action.
			eth1 := linkByName(t, h, "eth1")
			p.ns.tc(t, "qdisc", "add", "dev", "eth2", "ingress")
			p.ns.tc(t, "filter", "add", "dev", "eth2", "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
				"action", "mirred", "egress", "redirect", "dev", "eth1")
			p.ns.ip(t, "link", "add", "eth3", "type", "veth", "peer", "name", "peer3", "netns", p.peer.name)
			p.ns.tc(t, "qdisc", "add", "dev", "eth3", "ingress")
			p.ns.tc(t, "filter", "add", "dev", "eth3", "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
				"action", "mirred", "egress", "mirror", "dev", "eth1")

			if got := len(tapLinks(t, h)); c.holdTaps != (got == 2) {
				t.Fatalf("%d taps after the owner died", got)
			}
			if ok, _ := ingressOf(t, h, "eth0"); !ok {
				t.Fatalf("no leftover on eth0 to clean up")
			}
			for range 2 {
				if err := Cleanup(context.Background(), p.ns.path); err != nil {
					t.Fatalf("Cleanup: %v", err)
				}
				if taps := tapLinks(t, h); len(taps) != 0 {
					t.Errorf("taps %q left", taps)
				}
				for _, l := range []string{"eth0", "eth1"} {
					if ok, _ := ingressOf(t, h, l); ok {
						t.Errorf("%s keeps an ingress qdisc", l)
					}
				}
				if ok, targets := ingressOf(t, h, "eth2"); !ok || !slices.Equal(targets, []int{eth1.Attrs().Index}) {
					t.Errorf("eth2's foreign redirect removed")
				}
				if qs, _ := h.QdiscList(linkByName(t, h, "eth3")); !slices.ContainsFunc(qs, func(q netlink.Qdisc) bool { return q.Type() == "ingress" }) {
					t.Errorf("eth3's foreign ingress qdisc removed")
				}
			}
			// The namespace is usable again.
			attach(t, p.ns.path)
		})
	}

	t.Run("missing namespace", func(t *testing.T) {
		if err := Cleanup(context.Background(), "/var/run/netns/hull-netpod-does-not-exist"); err != nil {
			t.Errorf("Cleanup of a missing namespace: %v", err)
		}
	})
	t.Run("not a network namespace", func(t *testing.T) {
		if err := Cleanup(context.Background(), "/proc/self/ns/uts"); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Cleanup of a UTS namespace: %v", err)
		}
	})
}
