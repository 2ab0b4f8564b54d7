package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// testNetns creates a network namespace for one test and returns a
// netlink handle into it. The namespace has no name: it goes away when the
// test closes the handle and the namespace's descriptor.
func testNetns(t *testing.T) *netlink.Handle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the network tests need root: they create network namespaces")
	}
	ns := func() netns.NsHandle {
		// unshare(CLONE_NEWNET) moves the calling thread; move it back
		// before another goroutine may run on it.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("current network namespace: %v", err)
		}
		defer func() { _ = orig.Close() }()
		ns, err := netns.New()
		if err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("creating a network namespace: %v", err)
		}
		if err := netns.Set(orig); err != nil {
			// The thread stays locked, so it dies with this goroutine
			// instead of running others in the test's namespace.
			_ = ns.Close()
			t.Fatalf("returning to the original network namespace: %v", err)
		}
		runtime.UnlockOSThread()
		return ns
	}()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		_ = ns.Close()
		t.Fatalf("netlink handle in the test namespace: %v", err)
	}
	t.Cleanup(func() {
		h.Close()
		_ = ns.Close()
	})
	return h
}

// addLink adds a veth pair to the namespace: name with MAC mac, and a peer
// that is up so that name has a carrier. (veth rather than dummy: some
// kernels, like our CI's, are built without the dummy driver.)
func addLink(t *testing.T, h *netlink.Handle, name, mac string) {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	peer := "p" + name
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw}, PeerName: peer}); err != nil {
		t.Fatalf("adding veth %s: %v", name, err)
	}
	p, err := h.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(p); err != nil {
		t.Fatal(err)
	}
}

func testNetworkService(t *testing.T, h *netlink.Handle) *networkService {
	return &networkService{
		nl:         h,
		resolvConf: filepath.Join(t.TempDir(), "etc", "resolv.conf"),
		linkWait:   time.Second,
	}
}

const (
	macA  = "02:00:00:00:0a:01"
	macB  = "02:00:00:00:0b:01"
	macGW = "02:00:00:00:00:fe"
)

// podRequest is a typical request: one interface with IPv4 and IPv6, a
// directly connected route, default routes of both families, a route
// through the gateway with a metric, static neighbours, and DNS.
func podRequest() *api.ConfigureNetworkRequest {
	return &api.ConfigureNetworkRequest{
		Interfaces: []*api.Interface{{
			Name: "eth0", Mac: macA, Mtu: 1400,
			Addresses: []string{"198.18.7.2/24", "fd00:7::2/64"},
		}},
		Routes: []*api.Route{
			// Gateway routes first in the request: the service adds the
			// directly connected ones before them.
			{Gateway: "198.18.7.1", Device: "eth0"},
			{Destination: "10.10.0.0/16", Gateway: "198.18.7.1", Device: "eth0", Metric: 50},
			{Gateway: "fd00:7::1", Device: "eth0"},
			{Destination: "198.18.9.0/24", Device: "eth0"},
			{Destination: "198.18.7.0/24", Device: "eth0", Source: "198.18.7.2"},
			{Device: "eth0", Family: 6, Metric: 2000},
			// A gateway outside every prefix of the link (onlink), with a
			// path MTU.
			{Destination: "10.20.0.0/16", Gateway: "10.99.0.1", Device: "eth0", Onlink: true, Mtu: 1300},
		},
		Neighbors: []*api.Neighbor{
			{Ip: "198.18.7.1", Mac: macGW, Device: "eth0"},
			{Ip: "fd00:7::1", Mac: macGW, Device: "eth0"},
		},
		Dns: &api.DNS{Servers: []string{"198.18.7.1", "fd00:7::1"}, Searches: []string{"pod.svc.local", "svc.local"}, Options: []string{"ndots:5"}},
	}
}

func TestConfigureNetwork(t *testing.T) {
	h := testNetns(t)
	addLink(t, h, "veth0", macA)
	s := testNetworkService(t, h)
	ctx := context.Background()

	if _, err := s.ConfigureNetwork(ctx, podRequest()); err != nil {
		t.Fatalf("configure: %v", err)
	}

	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("no eth0 after configure: %v", err)
	}
	a := l.Attrs()
	if a.HardwareAddr.String() != macA || a.MTU != 1400 || a.Flags&net.FlagUp == 0 {
		t.Errorf("eth0: mac %s mtu %d flags %s; want %s, 1400, up", a.HardwareAddr, a.MTU, a.Flags, macA)
	}
	if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("lo not up: %v", err)
	}
	if got, want := globalAddrs(t, h, l), []string{"198.18.7.2/24", "fd00:7::2/64"}; !slices.Equal(got, want) {
		t.Errorf("eth0 addresses %v, want %v", got, want)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range addrs {
		if ad.IP.String() == "fd00:7::2" && (ad.Flags&unix.IFA_F_NODAD == 0 || ad.Flags&unix.IFA_F_TENTATIVE != 0) {
			t.Errorf("fd00:7::2 flags %#x: want nodad and not tentative", ad.Flags)
		}
	}

	routes := routeStrings(t, h)
	for _, want := range []string{
		"default via 198.18.7.1 dev eth0 scope 0 metric 0",
		"10.10.0.0/16 via 198.18.7.1 dev eth0 scope 0 metric 50",
		"198.18.9.0/24 dev eth0 scope 253 metric 0",
		"198.18.7.0/24 dev eth0 src 198.18.7.2 scope 253 metric 0",
		"default via fd00:7::1 dev eth0 scope 0 metric 1024",
		"fd00:7::/64 dev eth0 scope 0 metric 256",
		"default dev eth0 scope 0 metric 2000",
	} {
		if !slices.Contains(routes, want) {
			t.Errorf("route %q missing from %q", want, routes)
		}
	}

	neighs, err := h.NeighList(l.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"198.18.7.1", "fd00:7::1"} {
		i := slices.IndexFunc(neighs, func(n netlink.Neigh) bool { return n.IP.String() == ip })
		if i < 0 {
			t.Errorf("no neighbour entry for %s in %v", ip, neighs)
			continue
		}
		if n := neighs[i]; n.State != netlink.NUD_PERMANENT || n.HardwareAddr.String() != macGW {
			t.Errorf("neighbour %s: state %#x mac %s, want permanent %s", ip, n.State, n.HardwareAddr, macGW)
		}
	}

	b, err := os.ReadFile(s.resolvConf)
	if err != nil {
		t.Fatal(err)
	}
	want := "# Written by hull-agent.\nnameserver 198.18.7.1\nnameserver fd00:7::1\nsearch pod.svc.local svc.local\noptions ndots:5\n"
	if string(b) != want {
		t.Errorf("resolv.conf:\n%s\nwant:\n%s", b, want)
	}
	if fi, err := os.Stat(s.resolvConf); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("resolv.conf mode: %v %v", fi.Mode(), err)
	}

	// A second call replaces the addresses and starts the link's routes
	// over; the link keeps its name, and resolv.conf stays without DNS.
	second := &api.ConfigureNetworkRequest{
		Interfaces: []*api.Interface{{Name: "eth0", Mac: macA, Addresses: []string{"198.18.8.2/24"}}},
		Routes:     []*api.Route{{Gateway: "198.18.8.1", Device: "eth0"}},
	}
	if _, err := s.ConfigureNetwork(ctx, second); err != nil {
		t.Fatalf("second configure: %v", err)
	}
	if got, want := globalAddrs(t, h, l), []string{"198.18.8.2/24"}; !slices.Equal(got, want) {
		t.Errorf("eth0 addresses after the second call %v, want %v", got, want)
	}
	routes = routeStrings(t, h)
	if !slices.Contains(routes, "default via 198.18.8.1 dev eth0 scope 0 metric 0") {
		t.Errorf("new default route missing from %q", routes)
	}
	for _, r := range routes {
		if strings.Contains(r, "198.18.7.") || strings.Contains(r, "10.10.") {
			t.Errorf("route %q of the first call left after the second", r)
		}
	}
	if l2, err := h.LinkByName("eth0"); err != nil || l2.Attrs().MTU != 1400 || l2.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("eth0 after the second call: %v (mtu 0 keeps the MTU, the link is up)", err)
	}
	if b2, _ := os.ReadFile(s.resolvConf); string(b2) != want {
		t.Errorf("resolv.conf changed by a request without DNS: %q", b2)
	}
}

// TestConfigureNetworkLists checks that ListInterfaces and ListRoutes
// report what ConfigureNetwork set.
func TestConfigureNetworkLists(t *testing.T) {
	h := testNetns(t)
	addLink(t, h, "veth0", macA)
	s := testNetworkService(t, h)
	ctx := context.Background()
	if _, err := s.ConfigureNetwork(ctx, podRequest()); err != nil {
		t.Fatalf("configure: %v", err)
	}

	ifs, err := s.ListInterfaces(ctx, &api.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*api.Interface{}
	for _, in := range ifs.GetInterfaces() {
		byName[in.GetName()] = in
	}
	lo := byName["lo"]
	if !lo.GetUp() || !slices.Contains(lo.GetAddresses(), "127.0.0.1/8") {
		t.Errorf("lo reported as %v", lo)
	}
	eth := byName["eth0"]
	if eth.GetMac() != macA || eth.GetMtu() != 1400 || !eth.GetUp() {
		t.Errorf("eth0 reported as %v", eth)
	}
	for _, a := range []string{"198.18.7.2/24", "fd00:7::2/64"} {
		if !slices.Contains(eth.GetAddresses(), a) {
			t.Errorf("eth0 address %s missing from %v", a, eth.GetAddresses())
		}
	}
	if p := byName["pveth0"]; p == nil || !p.GetUp() {
		t.Errorf("the veth peer reported as %v", p)
	}

	rs, err := s.ListRoutes(ctx, &api.ListRoutesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []*api.Route{
		{Gateway: "198.18.7.1", Device: "eth0", Family: 4},
		{Destination: "10.10.0.0/16", Gateway: "198.18.7.1", Device: "eth0", Metric: 50, Family: 4},
		{Destination: "198.18.7.0/24", Device: "eth0", Source: "198.18.7.2", Scope: 253, Family: 4},
		{Destination: "198.18.9.0/24", Device: "eth0", Scope: 253, Family: 4},
		{Gateway: "fd00:7::1", Device: "eth0", Metric: 1024, Family: 6},
		{Destination: "10.20.0.0/16", Gateway: "10.99.0.1", Device: "eth0", Family: 4, Onlink: true, Mtu: 1300},
	} {
		if !slices.ContainsFunc(rs.GetRoutes(), func(r *api.Route) bool { return proto.Equal(r, want) }) {
			t.Errorf("route %v missing from %v", want, rs.GetRoutes())
		}
	}
	for _, r := range rs.GetRoutes() {
		if r.GetFamily() != 4 && r.GetFamily() != 6 {
			t.Errorf("route %v without family", r)
		}
	}
}

// TestConfigureNetworkWaitsForDevice: a device that appears during the
// wait is configured; one that never does is NotFound after the bound.
func TestConfigureNetworkWaitsForDevice(t *testing.T) {
	h := testNetns(t)
	s := testNetworkService(t, h)
	s.linkWait = 5 * time.Second
	ctx := context.Background()

	added := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		added <- h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "late0", HardwareAddr: mustMAC(t, macA)}, PeerName: "plate0"})
	}()
	req := &api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Name: "eth0", Mac: macA, Addresses: []string{"198.18.7.2/24"}}}}
	start := time.Now()
	_, err := s.ConfigureNetwork(ctx, req)
	if aerr := <-added; aerr != nil {
		t.Fatalf("adding the late link: %v", aerr)
	}
	if err != nil {
		t.Fatalf("configure with a late device: %v", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("configured after %s, before the device existed", took)
	}
	if _, err := h.LinkByName("eth0"); err != nil {
		t.Errorf("late device not renamed: %v", err)
	}

	t.Run("never", func(t *testing.T) {
		s.linkWait = time.Second
		req := &api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Name: "eth1", Mac: "02:00:00:00:0c:01"}}}
		start := time.Now()
		_, err := s.ConfigureNetwork(ctx, req)
		took := time.Since(start)
		if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "02:00:00:00:0c:01") {
			t.Errorf("unknown MAC: got %v, want NotFound naming the MAC", err)
		}
		if took < time.Second || took > 3*time.Second {
			t.Errorf("gave up after %s, want about %s", took, s.linkWait)
		}
	})
	t.Run("request deadline", func(t *testing.T) {
		s.linkWait = time.Minute
		req := &api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Name: "eth1", Mac: "02:00:00:00:0c:01"}}}
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		start := time.Now()
		_, err := s.ConfigureNetwork(ctx, req)
		if took := time.Since(start); !errdefs.IsNotFound(err) || took > time.Second {
			t.Errorf("got %v after %s, want NotFound before the request's deadline", err, took)
		}
	})
}

// TestConfigureNetworkInvalid: malformed requests are InvalidArgument,
// name the field, and change nothing.
func TestConfigureNetworkInvalid(t *testing.T) {
	h := testNetns(t)
	addLink(t, h, "veth0", macA)
	s := testNetworkService(t, h)

	for _, tc := range []struct {
		name  string
		edit  func(*api.ConfigureNetworkRequest)
		field string
	}{
		{"bad mac", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Mac = "02:00:00:0a:01" }, "interfaces[0].mac"},
		{"long mac", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Mac = "02:00:00:00:00:00:0a:01" }, "interfaces[0].mac"},
		{"bad cidr", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[1] = "fd00:7::2" }, "interfaces[0].addresses[1]"},
		{"bad prefix length", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[0] = "198.18.7.2/33" }, "interfaces[0].addresses[0]"},
		{"multicast address", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[0] = "224.0.0.5/24" }, "interfaces[0].addresses[0]"},
		{"empty name", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Name = "" }, "interfaces[0].name"},
		{"long name", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Name = "eth0123456789012" }, "interfaces[0].name"},
		{"slash in name", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Name = "eth/0" }, "interfaces[0].name"},
		{"small mtu", func(r *api.ConfigureNetworkRequest) { r.Interfaces[0].Mtu = 67 }, "interfaces[0].mtu"},
		{"same name twice", func(r *api.ConfigureNetworkRequest) {
			r.Interfaces = append(r.Interfaces, &api.Interface{Name: "eth0", Mac: macB})
		}, "interfaces[1].name"},
		{"same mac twice", func(r *api.ConfigureNetworkRequest) {
			r.Interfaces = append(r.Interfaces, &api.Interface{Name: "eth1", Mac: strings.ToUpper(macA)})
		}, "interfaces[1].mac"},
		{"bad destination", func(r *api.ConfigureNetworkRequest) { r.Routes[1].Destination = "10.10.0.0" }, "routes[1].destination"},
		{"host bits", func(r *api.ConfigureNetworkRequest) { r.Routes[1].Destination = "10.10.0.1/16" }, "routes[1].destination"},
		{"bad gateway", func(r *api.ConfigureNetworkRequest) { r.Routes[0].Gateway = "198.18.7" }, "routes[0].gateway"},
		{"bad source", func(r *api.ConfigureNetworkRequest) { r.Routes[4].Source = "x" }, "routes[4].source"},
		{"mixed families", func(r *api.ConfigureNetworkRequest) { r.Routes[1].Gateway = "fd00:7::1" }, "routes[1]"},
		{"family against gateway", func(r *api.ConfigureNetworkRequest) { r.Routes[0].Family = 6 }, "routes[0]"},
		{"bad family", func(r *api.ConfigureNetworkRequest) { r.Routes[0].Family = 5 }, "routes[0].family"},
		{"bad route mtu", func(r *api.ConfigureNetworkRequest) { r.Routes[6].Mtu = 20 }, "routes[6].mtu"},
		{"default without family", func(r *api.ConfigureNetworkRequest) {
			r.Routes = append(r.Routes, &api.Route{Device: "eth0"})
		}, "routes[7]"},
		{"no device nor gateway", func(r *api.ConfigureNetworkRequest) { r.Routes[3].Device = "" }, "routes[3]"},
		{"unknown route device", func(r *api.ConfigureNetworkRequest) { r.Routes[2].Device = "eth7" }, "routes[2].device"},
		{"bad scope", func(r *api.ConfigureNetworkRequest) { r.Routes[2].Scope = 256 }, "routes[2].scope"},
		{"bad neighbour ip", func(r *api.ConfigureNetworkRequest) { r.Neighbors[1].Ip = "fd00:7::1::" }, "neighbors[1].ip"},
		{"bad neighbour mac", func(r *api.ConfigureNetworkRequest) { r.Neighbors[0].Mac = "nope" }, "neighbors[0].mac"},
		{"unknown neighbour device", func(r *api.ConfigureNetworkRequest) { r.Neighbors[0].Device = "eth9" }, "neighbors[0].device"},
		{"no neighbour device", func(r *api.ConfigureNetworkRequest) { r.Neighbors[0].Device = "" }, "neighbors[0].device"},
		{"bad dns server", func(r *api.ConfigureNetworkRequest) { r.Dns.Servers[0] = "dns.example" }, "dns.servers[0]"},
		{"newline in search", func(r *api.ConfigureNetworkRequest) { r.Dns.Searches[0] = "a\nnameserver 1.2.3.4" }, "dns.searches[0]"},
		{"blank option", func(r *api.ConfigureNetworkRequest) { r.Dns.Options[0] = "ndots: 5" }, "dns.options[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := podRequest()
			tc.edit(req)
			_, err := s.ConfigureNetwork(context.Background(), req)
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %v, want an invalid argument", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %s", err, tc.field)
			}
			assertUntouched(t, h, s)
		})
	}
}

// TestConfigureNetworkNames: interfaces of the request may swap names; a
// name held by a link the request does not configure fails before any
// change.
func TestConfigureNetworkNames(t *testing.T) {
	h := testNetns(t)
	addLink(t, h, "eth1", macA)
	addLink(t, h, "eth0", macB)
	s := testNetworkService(t, h)
	ctx := context.Background()

	taken := &api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Name: "eth0", Mac: macA}}}
	_, err := s.ConfigureNetwork(ctx, taken)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), macB) {
		t.Errorf("name of an unconfigured link: got %v, want a failed precondition naming %s", err, macB)
	}
	if l, err := h.LinkByName("eth1"); err != nil || l.Attrs().HardwareAddr.String() != macA {
		t.Errorf("eth1 changed by a failed request: %v", err)
	}

	swap := &api.ConfigureNetworkRequest{Interfaces: []*api.Interface{
		{Name: "eth0", Mac: macA, Addresses: []string{"198.18.7.2/24"}},
		{Name: "eth1", Mac: macB, Addresses: []string{"198.18.8.2/24"}},
	}}
	if _, err := s.ConfigureNetwork(ctx, swap); err != nil {
		t.Fatalf("swapping names: %v", err)
	}
	for name, mac := range map[string]string{"eth0": macA, "eth1": macB} {
		l, err := h.LinkByName(name)
		if err != nil || l.Attrs().HardwareAddr.String() != mac || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s after the swap: %v, want MAC %s and up", name, err, mac)
		}
	}
}

func TestConfigureNetworkReadOnly(t *testing.T) {
	s := newNetworkService(false)
	_, err := s.ConfigureNetwork(context.Background(), podRequest())
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("configure outside a VM: got %v, want a failed precondition", err)
	}
}

func TestWriteResolvConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	for _, content := range []string{"nameserver 198.18.7.1\n", "nameserver fd00::1\n"} {
		if err := writeResolvConf(p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != content {
			t.Errorf("read back %q (%v), want %q", b, err, content)
		}
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("stat: %v, want mode 0644", err)
		}
	}
	ents, err := os.ReadDir(filepath.Dir(p))
	if err != nil || len(ents) != 1 {
		t.Errorf("directory holds %v (%v), want resolv.conf alone", ents, err)
	}
}

// assertUntouched fails the test when the namespace looks configured: lo
// up, a link renamed, an address, a neighbour, a route, or resolv.conf.
func assertUntouched(t *testing.T, h *netlink.Handle, s *networkService) {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		a := l.Attrs()
		switch a.Name {
		case "lo", "veth0", "pveth0":
		default:
			t.Errorf("link %s appeared", a.Name)
		}
		if a.Name != "pveth0" && a.Flags&net.FlagUp != 0 {
			t.Errorf("link %s set up", a.Name)
		}
		if got := globalAddrs(t, h, l); len(got) > 0 {
			t.Errorf("link %s got addresses %v", a.Name, got)
		}
		if a.Name == "veth0" && a.MTU != 1500 {
			t.Errorf("veth0 MTU changed to %d", a.MTU)
		}
	}
	if rs := routeStrings(t, h); len(rs) > 0 {
		t.Errorf("routes appeared: %q", rs)
	}
	if _, err := os.Stat(s.resolvConf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resolv.conf written: %v", err)
	}
}

// globalAddrs lists a link's addresses other than link-local ones.
func globalAddrs(t *testing.T, h *netlink.Handle, l netlink.Link) []string {
	t.Helper()
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if a.Scope == int(netlink.SCOPE_UNIVERSE) {
			out = append(out, a.IPNet.String())
		}
	}
	return out
}

// routeStrings lists the main table's unicast routes in a form close to
// ip-route(8), leaving out the IPv6 link-local and multicast routes the
// kernel adds to every link.
func routeStrings(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		if r.Type != unix.RTN_UNICAST || (r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast()) {
			continue
		}
		var b strings.Builder
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			b.WriteString("default")
		} else {
			b.WriteString(r.Dst.String())
		}
		if r.Gw != nil {
			b.WriteString(" via " + r.Gw.String())
		}
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			b.WriteString(" dev " + l.Attrs().Name)
		}
		if r.Src != nil {
			b.WriteString(" src " + r.Src.String())
		}
		fmt.Fprintf(&b, " scope %d metric %d", r.Scope, r.Priority)
		out = append(out, b.String())
	}
	return out
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}
