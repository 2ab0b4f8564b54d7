package netpod

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	agent "github.com/hull-runtime/hull/api/agent/v1"
)

// buildRequest reads the configuration of the mirrored interfaces: their
// addresses, their routes and their permanent neighbours.
func buildRequest(ctx context.Context, h *netlink.Handle, mirrors []*mirror) (*agent.ConfigureNetworkRequest, error) {
	req := &agent.ConfigureNetworkRequest{}
	names := map[int]string{}
	for _, m := range mirrors {
		names[m.index] = m.name
		addrs, err := addresses(h, m)
		if err != nil {
			return nil, err
		}
		req.Interfaces = append(req.Interfaces, &agent.Interface{
			Name:      m.name,
			Mac:       m.mac.String(),
			Mtu:       uint32(m.mtu),
			Addresses: addrs,
		})
		neighs, err := neighbors(h, m)
		if err != nil {
			return nil, err
		}
		req.Neighbors = append(req.Neighbors, neighs...)
	}
	if len(mirrors) == 0 {
		return req, nil
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := dump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("listing the routes: %w", classify(err))
		}
		for _, r := range rs {
			if ar := guestRoute(ctx, r, names); ar != nil {
				req.Routes = append(req.Routes, ar)
			}
		}
	}
	// Link and host scope routes first: a gateway must be reachable when
	// a route through it is added.
	slices.SortStableFunc(req.Routes, func(a, b *agent.Route) int { return int(b.Scope) - int(a.Scope) })
	return req, nil
}

// addresses are the global addresses of m, IPv4 first, in CIDR form.
func addresses(h *netlink.Handle, m *mirror) ([]string, error) {
	var out []string
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: m.index, Name: m.name}}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		as, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(link, family) })
		if err != nil {
			return nil, fmt.Errorf("listing the addresses of %s: %w", m.name, classify(err))
		}
		for _, a := range as {
			if a.Scope != unix.RT_SCOPE_UNIVERSE || a.IPNet == nil {
				continue
			}
			p, ok := prefix(a.IPNet)
			if !ok || p.Addr().IsLinkLocalUnicast() && p.Addr().Is6() {
				continue
			}
			out = append(out, p.String())
		}
	}
	return out, nil
}

// neighbors are the permanent neighbour entries of m.
func neighbors(h *netlink.Handle, m *mirror) ([]*agent.Neighbor, error) {
	var out []*agent.Neighbor
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := dump(func() ([]netlink.Neigh, error) { return h.NeighList(m.index, family) })
		if err != nil {
			return nil, fmt.Errorf("listing the neighbours of %s: %w", m.name, classify(err))
		}
		for _, n := range ns {
			ip, ok := addr(n.IP)
			if n.State&netlink.NUD_PERMANENT == 0 || !ok || len(n.HardwareAddr) == 0 {
				continue
			}
			out = append(out, &agent.Neighbor{Ip: ip.String(), Mac: n.HardwareAddr.String(), Device: m.name})
		}
	}
	return out, nil
}

// guestRoute is r for the guest, or nil when the guest's kernel makes it
// by itself or the guest cannot have it. names maps the mirrored
// interfaces' indexes to their names.
func guestRoute(ctx context.Context, r netlink.Route, names map[int]string) *agent.Route {
	logger := log.G(ctx).WithField("route", r.String())
	switch {
	case r.Type != unix.RTN_UNICAST:
		// blackhole, unreachable, prohibit, local, multicast...: the
		// protocol only has unicast routes.
		logger.Debug("netpod: route type not mirrored")
		return nil
	case r.Protocol == unix.RTPROT_KERNEL:
		// The guest's kernel makes these from the addresses.
		return nil
	case r.Protocol == unix.RTPROT_RA:
		// Router advertisements reach the guest through the mirror; its
		// kernel makes these routes itself.
		return nil
	case len(r.MultiPath) > 0 || r.Via != nil:
		logger.Warn("netpod: multipath or cross-family route not mirrored")
		return nil
	}
	dev, ok := names[r.LinkIndex]
	if !ok {
		logger.Debug("netpod: route through an interface not mirrored")
		return nil
	}
	ar := &agent.Route{
		Device: dev,
		Scope:  uint32(r.Scope),
		Metric: uint32(r.Priority),
		Family: 4,
		Onlink: r.Flags&unix.RTNH_F_ONLINK != 0,
		Mtu:    uint32(max(r.MTU, 0)),
	}
	if r.Family == netlink.FAMILY_V6 {
		ar.Family = 6
	}
	if r.Dst != nil {
		p, ok := prefix(r.Dst)
		if !ok {
			return nil
		}
		if a := p.Addr(); a.IsMulticast() || a.Is6() && a.IsLinkLocalUnicast() {
			return nil
		}
		if p.Bits() > 0 {
			ar.Destination = p.String()
		}
	}
	if gw, ok := addr(r.Gw); ok {
		ar.Gateway = gw.String()
	}
	if src, ok := addr(r.Src); ok {
		ar.Source = src.String()
	}
	return ar
}

// addr converts ip, with IPv4 in its 4-byte form.
func addr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok && ip != nil
}

// prefix converts n, keeping the host part of the address ("10.0.0.5/24"
// stays as it is).
func prefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := addr(n.IP)
	ones, bits := n.Mask.Size()
	if !ok || bits == 0 {
		return netip.Prefix{}, false
	}
	if a.Is4() && bits == 8*net.IPv6len {
		ones -= 8 * (net.IPv6len - net.IPv4len)
	}
	p := netip.PrefixFrom(a, ones)
	return p, p.IsValid()
}
