package agent

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// netPlan is a checked ConfigureNetworkRequest: what ConfigureNetwork
// applies, in order.
type netPlan struct {
	links  []linkPlan
	routes []routePlan
	neighs []neighPlan
	// resolvConf is the content of resolv.conf; nil leaves it alone.
	resolvConf []byte
}

// linkPlan is one interface to configure.
type linkPlan struct {
	field string // "interfaces[i]", for messages
	name  string
	mac   net.HardwareAddr
	// mtu is 0 to keep the device's MTU.
	mtu   int
	addrs []netip.Prefix
}

// routePlan is one route to add or replace in the main table.
type routePlan struct {
	field  string // "routes[i]", for messages
	family int    // netlink.FAMILY_V4 or FAMILY_V6
	// dst is the destination; a zero-length prefix for a default route.
	dst    netip.Prefix
	gw     netip.Addr // invalid when directly connected
	src    netip.Addr // invalid for none
	device string     // empty only with a gateway
	scope  netlink.Scope
	metric int
	onlink bool
	mtu    int
}

// neighPlan is one permanent neighbour entry.
type neighPlan struct {
	field  string // "neighbors[i]", for messages
	ip     netip.Addr
	mac    net.HardwareAddr
	device string
}

// invalidf is an InvalidArgument error with a message.
func invalidf(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// parseNetworkRequest checks a request without looking at the guest. It
// catches every malformed field, so that nothing is changed for a request
// that cannot be applied.
func parseNetworkRequest(req *api.ConfigureNetworkRequest) (*netPlan, error) {
	p := &netPlan{}
	names := map[string]string{} // name -> field
	macs := map[string]string{}  // mac -> field
	for i, in := range req.GetInterfaces() {
		l, err := parseInterface(fmt.Sprintf("interfaces[%d]", i), in)
		if err != nil {
			return nil, err
		}
		if other, ok := names[l.name]; ok {
			return nil, invalidf("%s.name %q: also the name of %s", l.field, l.name, other)
		}
		if other, ok := macs[l.mac.String()]; ok {
			return nil, invalidf("%s.mac %s: also the MAC of %s", l.field, l.mac, other)
		}
		names[l.name], macs[l.mac.String()] = l.field, l.field
		p.links = append(p.links, l)
	}
	for i, r := range req.GetRoutes() {
		rp, err := parseRoute(fmt.Sprintf("routes[%d]", i), r)
		if err != nil {
			return nil, err
		}
		p.routes = append(p.routes, rp)
	}
	for i, n := range req.GetNeighbors() {
		np, err := parseNeighbor(fmt.Sprintf("neighbors[%d]", i), n)
		if err != nil {
			return nil, err
		}
		p.neighs = append(p.neighs, np)
	}
	if dns := req.GetDns(); dns != nil {
		b, err := resolvConf(dns)
		if err != nil {
			return nil, err
		}
		p.resolvConf = b
	}
	return p, nil
}

func parseInterface(field string, in *api.Interface) (linkPlan, error) {
	l := linkPlan{field: field, name: in.GetName()}
	if err := checkLinkName(field+".name", l.name); err != nil {
		return l, err
	}
	mac, err := parseMAC(field+".mac", in.GetMac())
	if err != nil {
		return l, err
	}
	l.mac = mac
	if m := in.GetMtu(); m != 0 {
		if m < 68 || m > 65535 {
			return l, invalidf("%s.mtu %d: want 68 to 65535 (or 0 to keep the device's)", field, m)
		}
		l.mtu = int(m)
	}
	seen := map[netip.Prefix]bool{}
	for j, a := range in.GetAddresses() {
		f := fmt.Sprintf("%s.addresses[%d]", field, j)
		pfx, err := parsePrefix(f, a)
		if err != nil {
			return l, err
		}
		if ad := pfx.Addr(); !ad.IsGlobalUnicast() && !ad.IsLinkLocalUnicast() {
			return l, invalidf("%s %q: not a unicast address a device can hold", f, a)
		}
		if seen[pfx] {
			return l, invalidf("%s %q: given twice", f, a)
		}
		seen[pfx] = true
		l.addrs = append(l.addrs, pfx)
	}
	return l, nil
}

// parsePrefix parses an address with its prefix length, "198.18.0.5/24".
func parsePrefix(field, s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil || pfx.Addr().Is4In6() {
		return netip.Prefix{}, invalidf("%s %q: not an address in CIDR form", field, s)
	}
	return pfx, nil
}

// parseIP parses an IP address without zone.
func parseIP(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() {
		return netip.Addr{}, invalidf("%s %q: not an IP address", field, s)
	}
	return a, nil
}

func parseRoute(field string, r *api.Route) (routePlan, error) {
	rp := routePlan{field: field, device: r.GetDevice(), metric: int(r.GetMetric()), onlink: r.GetOnlink(), mtu: int(r.GetMtu())}
	if r.GetMetric() > 1<<31-1 {
		return rp, invalidf("%s.metric %d: too large", field, r.GetMetric())
	}
	if m := r.GetMtu(); m != 0 && (m < 68 || m > 65535) {
		return rp, invalidf("%s.mtu %d: want 0 or 68 to 65535", field, m)
	}
	if r.GetScope() > 255 {
		return rp, invalidf("%s.scope %d: want 0 to 255", field, r.GetScope())
	}
	rp.scope = netlink.Scope(r.GetScope())
	var families []string // which fields fixed the family, for messages
	family := 0
	want := func(f int, what string) error {
		if family != 0 && family != f {
			return invalidf("%s: %s is IPv%d, but %s says IPv%d", field, what, familyNumber(f), strings.Join(families, " and "), familyNumber(family))
		}
		family = f
		families = append(families, what)
		return nil
	}
	switch r.GetFamily() {
	case 0:
	case 4:
		_ = want(netlink.FAMILY_V4, "family")
	case 6:
		_ = want(netlink.FAMILY_V6, "family")
	default:
		return rp, invalidf("%s.family %d: want 4, 6 or 0", field, r.GetFamily())
	}
	if d := r.GetDestination(); d != "" {
		pfx, err := parsePrefix(field+".destination", d)
		if err != nil {
			return rp, err
		}
		if pfx.Masked() != pfx {
			return rp, invalidf("%s.destination %q: host bits set (the network is %s)", field, d, pfx.Masked())
		}
		rp.dst = pfx
		if err := want(addrFamily(pfx.Addr()), "destination"); err != nil {
			return rp, err
		}
	}
	if g := r.GetGateway(); g != "" {
		a, err := parseIP(field+".gateway", g)
		if err != nil {
			return rp, err
		}
		rp.gw = a
		if err := want(addrFamily(rp.gw), "gateway"); err != nil {
			return rp, err
		}
	}
	if s := r.GetSource(); s != "" {
		a, err := parseIP(field+".source", s)
		if err != nil {
			return rp, err
		}
		rp.src = a
		if err := want(addrFamily(rp.src), "source"); err != nil {
			return rp, err
		}
	}
	if family == 0 {
		return rp, invalidf("%s: a default route without gateway needs its family (4 or 6)", field)
	}
	rp.family = family
	if !rp.dst.IsValid() {
		rp.dst = netip.PrefixFrom(zeroAddr(family), 0)
	}
	if rp.device == "" && !rp.gw.IsValid() {
		return rp, invalidf("%s: a route without gateway needs a device", field)
	}
	if rp.device != "" {
		if err := checkLinkName(field+".device", rp.device); err != nil {
			return rp, err
		}
	}
	// As ip(8) does: a directly connected IPv4 route is link-scoped unless
	// the request says otherwise. (IPv6 routes have no scope.)
	if !rp.gw.IsValid() && family == netlink.FAMILY_V4 && rp.scope == netlink.SCOPE_UNIVERSE {
		rp.scope = netlink.SCOPE_LINK
	}
	return rp, nil
}

func parseNeighbor(field string, n *api.Neighbor) (neighPlan, error) {
	np := neighPlan{field: field, device: n.GetDevice()}
	a, err := parseIP(field+".ip", n.GetIp())
	if err != nil {
		return np, err
	}
	np.ip = a
	if np.mac, err = parseMAC(field+".mac", n.GetMac()); err != nil {
		return np, err
	}
	if np.device == "" {
		return np, invalidf("%s.device: empty", field)
	}
	if err := checkLinkName(field+".device", np.device); err != nil {
		return np, err
	}
	return np, nil
}

// resolvConf renders the resolver configuration.
func resolvConf(dns *api.DNS) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# Written by hull-agent.\n")
	for i, s := range dns.GetServers() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, invalidf("dns.servers[%d] %q: not an IP address", i, s)
		}
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	if err := resolvWords("dns.searches", dns.GetSearches()); err != nil {
		return nil, err
	}
	if err := resolvWords("dns.options", dns.GetOptions()); err != nil {
		return nil, err
	}
	if s := dns.GetSearches(); len(s) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(s, " "))
	}
	if o := dns.GetOptions(); len(o) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(o, " "))
	}
	return b.Bytes(), nil
}

// resolvWords checks words that go on one resolv.conf line.
func resolvWords(field string, words []string) error {
	for i, w := range words {
		if w == "" || strings.ContainsFunc(w, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '#' || r == ';' }) {
			return invalidf("%s[%d] %q: empty, or holds blanks, control characters or a comment sign", field, i, w)
		}
	}
	return nil
}

// checkLinkName checks a network interface name as the kernel does
// (dev_valid_name).
func checkLinkName(field, name string) error {
	switch {
	case name == "":
		return invalidf("%s: empty", field)
	case len(name) >= unix.IFNAMSIZ:
		return invalidf("%s %q: longer than %d bytes", field, name, unix.IFNAMSIZ-1)
	case name == "." || name == "..":
		return invalidf("%s %q: not a name", field, name)
	case strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || r <= ' ' || r == 0x7f }):
		return invalidf("%s %q: holds '/', ':', blanks or control characters", field, name)
	}
	return nil
}

// parseMAC parses an Ethernet MAC address.
func parseMAC(field, s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, invalidf("%s %q: not an Ethernet MAC address", field, s)
	}
	return mac, nil
}

func addrFamily(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func familyNumber(f int) int {
	if f == netlink.FAMILY_V4 {
		return 4
	}
	return 6
}

func zeroAddr(family int) netip.Addr {
	if family == netlink.FAMILY_V4 {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}
