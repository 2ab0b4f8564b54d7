package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/atomicfile"
)

const (
	// guestResolvConf is the guest's resolver configuration.
	guestResolvConf = "/etc/resolv.conf"
	// linkWait bounds how long ConfigureNetwork waits for a device to
	// appear: virtio_net loads in the background after the agent began
	// serving, so right after boot the device may not be there yet.
	linkWait = 10 * time.Second
	// linkPoll is how often the wait looks for the device.
	linkPoll = 50 * time.Millisecond
	// replyMargin is kept from the request's deadline so that a device
	// that never appears is reported as such, not as a timeout.
	replyMargin = 250 * time.Millisecond
	// dumpRetries bounds the retries of a netlink dump that the kernel
	// interrupted because the table changed meanwhile.
	dumpRetries = 5
)

// networkService serves api.NetworkService with netlink.
type networkService struct {
	// nl reaches the network namespace the service configures: the
	// guest's own in a VM, a test's namespace in unit tests.
	nl *netlink.Handle
	// readOnly refuses ConfigureNetwork: an agent that is not PID 1 of a
	// VM serves on the host, whose network it must leave alone.
	readOnly bool
	// resolvConf is the path of the resolver configuration it writes.
	resolvConf string
	// linkWait bounds the wait for a device whose driver is still loading.
	linkWait time.Duration

	// mu serializes ConfigureNetwork calls.
	mu sync.Mutex
}

var _ api.NetworkService = (*networkService)(nil)

// newNetworkService returns the service for the agent's own network
// namespace; only the agent running as PID 1 of a VM may change it.
func newNetworkService(initMode bool) *networkService {
	return &networkService{
		// The zero handle opens a socket per request in the caller's
		// namespace, which in the guest is the only one the agent is in.
		nl:         &netlink.Handle{},
		readOnly:   !initMode,
		resolvConf: guestResolvConf,
		linkWait:   linkWait,
	}
}

// ConfigureNetwork sets up the interfaces, then the routes, the neighbours
// and resolv.conf. The request is checked in full, and the devices are
// found, before anything changes.
func (s *networkService) ConfigureNetwork(ctx context.Context, req *api.ConfigureNetworkRequest) (*api.ConfigureNetworkResponse, error) {
	if s.readOnly {
		return nil, fmt.Errorf("configuring the network: only the agent running as PID 1 of a VM changes it: %w", errdefs.ErrFailedPrecondition)
	}
	plan, err := parseNetworkRequest(req)
	if err != nil {
		return nil, fmt.Errorf("configuring the network: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	start := time.Now()
	links, all, err := s.waitLinks(ctx, plan.links)
	if err != nil {
		return nil, fmt.Errorf("configuring the network: %w", err)
	}
	if err := checkAgainstGuest(plan, links, all); err != nil {
		return nil, fmt.Errorf("configuring the network: %w", err)
	}
	found := time.Since(start)

	if err := s.apply(plan, links); err != nil {
		return nil, fmt.Errorf("configuring the network: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{
		"interfaces": len(plan.links), "routes": len(plan.routes), "neighbors": len(plan.neighs),
		"dns": plan.resolvConf != nil, "device_wait": found, "took": time.Since(start),
	}).Info("network configured")
	return &api.ConfigureNetworkResponse{}, nil
}

// waitLinks finds the link of each planned interface by its MAC address,
// waiting for devices that are not there yet at most s.linkWait or until
// shortly before the request's deadline. It returns the links in plan
// order, and every link of the namespace.
func (s *networkService) waitLinks(ctx context.Context, plans []linkPlan) ([]netlink.Link, []netlink.Link, error) {
	start := time.Now()
	deadline := start.Add(s.linkWait)
	if d, ok := ctx.Deadline(); ok && d.Add(-replyMargin).Before(deadline) {
		deadline = d.Add(-replyMargin)
	}
	for {
		links, err := s.links()
		if err != nil {
			return nil, nil, err
		}
		found, missing, err := matchLinks(plans, links)
		if err != nil {
			return nil, nil, err
		}
		if len(missing) == 0 {
			return found, links, nil
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, nil, fmt.Errorf("no network device with MAC %s (waited %s): %w",
				strings.Join(missing, ", "), time.Since(start).Round(time.Millisecond), errdefs.ErrNotFound)
		}
		t := time.NewTimer(min(wait, linkPoll))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, fmt.Errorf("waiting for the network device with MAC %s: %w", strings.Join(missing, ", "), ctx.Err())
		case <-t.C:
		}
	}
}

// matchLinks finds the link of each planned interface by its MAC address.
// It returns the links in plan order (nil where none matched) and the MAC
// addresses that no link has.
func matchLinks(plans []linkPlan, links []netlink.Link) (found []netlink.Link, missing []string, _ error) {
	found = make([]netlink.Link, len(plans))
	for i, p := range plans {
		var matches []netlink.Link
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, p.mac) {
				matches = append(matches, l)
			}
		}
		switch len(matches) {
		case 0:
			missing = append(missing, p.mac.String())
		case 1:
			found[i] = matches[0]
		default:
			names := make([]string, len(matches))
			for j, m := range matches {
				names[j] = m.Attrs().Name
			}
			return nil, nil, fmt.Errorf("%s.mac %s: held by several links (%s): %w",
				p.field, p.mac, strings.Join(names, ", "), errdefs.ErrFailedPrecondition)
		}
	}
	return found, missing, nil
}

// checkAgainstGuest checks what the request asks of the guest's links:
// each interface's name must be free or held by another interface of the
// request, and each device of a route or neighbour must exist once the
// interfaces are named.
func checkAgainstGuest(p *netPlan, found, all []netlink.Link) error {
	planned := map[int]bool{}
	for _, l := range found {
		planned[l.Attrs().Index] = true
	}
	names := map[string]bool{} // the link names once the interfaces are configured
	for _, l := range all {
		if !planned[l.Attrs().Index] {
			names[l.Attrs().Name] = true
		}
	}
	for i, lp := range p.links {
		names[lp.name] = true
		for _, l := range all {
			a := l.Attrs()
			if a.Name == lp.name && a.Index != found[i].Attrs().Index && !planned[a.Index] {
				return fmt.Errorf("%s.name %q: taken by the link with MAC %s, which the request does not configure: %w",
					lp.field, lp.name, a.HardwareAddr, errdefs.ErrFailedPrecondition)
			}
		}
	}
	for _, r := range p.routes {
		if r.device != "" && !names[r.device] {
			return invalidf("%s.device %q: no such link", r.field, r.device)
		}
	}
	for _, n := range p.neighs {
		if !names[n.device] {
			return invalidf("%s.device %q: no such link", n.field, n.device)
		}
	}
	return nil
}

// apply changes the guest: loopback, interfaces, routes, neighbours, DNS.
func (s *networkService) apply(p *netPlan, links []netlink.Link) error {
	lo, err := s.nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding the loopback link: %w", err)
	}
	if err := s.nl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("setting lo up: %w", err)
	}
	for i, lp := range p.links {
		if err := s.configureLink(lp, links[i].Attrs().Index); err != nil {
			return err
		}
	}
	// Directly connected routes first: the gateways of the others must be
	// reachable when they are added.
	routes := slices.Clone(p.routes)
	slices.SortStableFunc(routes, func(a, b routePlan) int {
		switch {
		case !a.gw.IsValid() && b.gw.IsValid():
			return -1
		case a.gw.IsValid() && !b.gw.IsValid():
			return 1
		}
		return 0
	})
	for _, r := range routes {
		if err := s.addRoute(r); err != nil {
			return err
		}
	}
	for _, n := range p.neighs {
		if err := s.setNeigh(n); err != nil {
			return err
		}
	}
	if p.resolvConf != nil {
		if err := writeResolvConf(s.resolvConf, p.resolvConf); err != nil {
			return fmt.Errorf("writing %s: %w", s.resolvConf, err)
		}
	}
	return nil
}

// configureLink gives the link with index idx its name, MTU and addresses
// and sets it up. The link goes down first: a link must be down to be
// renamed, and going down drops the routes through it (and its IPv6
// addresses), so that a repeated call starts over from the request.
func (s *networkService) configureLink(lp linkPlan, idx int) error {
	l, err := s.nl.LinkByIndex(idx)
	if err != nil {
		return fmt.Errorf("%s: link %d (MAC %s): %w", lp.field, idx, lp.mac, err)
	}
	cur := l.Attrs().Name
	if err := s.nl.LinkSetDown(l); err != nil {
		return fmt.Errorf("%s: setting %s down: %w", lp.field, cur, err)
	}
	if cur != lp.name {
		// The name may belong to another interface of the request, whose
		// turn comes later (checkAgainstGuest made sure): move it aside.
		if holder, err := s.nl.LinkByName(lp.name); err == nil && holder.Attrs().Index != idx {
			tmp := fmt.Sprintf("hulltmp%d", holder.Attrs().Index)
			if err := s.nl.LinkSetDown(holder); err != nil {
				return fmt.Errorf("%s: setting %s down: %w", lp.field, lp.name, err)
			}
			if err := s.nl.LinkSetName(holder, tmp); err != nil {
				return fmt.Errorf("%s: renaming %s to %s to free its name: %w", lp.field, lp.name, tmp, err)
			}
		} else if err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
			return fmt.Errorf("%s: looking up link %s: %w", lp.field, lp.name, err)
		}
		if err := s.nl.LinkSetName(l, lp.name); err != nil {
			return fmt.Errorf("%s: renaming %s to %s: %w", lp.field, cur, lp.name, err)
		}
	}
	if lp.mtu != 0 && l.Attrs().MTU != lp.mtu {
		if err := s.nl.LinkSetMTU(l, lp.mtu); err != nil {
			return fmt.Errorf("%s: setting the MTU of %s to %d: %w", lp.field, lp.name, lp.mtu, err)
		}
	}
	if err := s.setAddrs(l, lp); err != nil {
		return err
	}
	if err := s.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: setting %s up: %w", lp.field, lp.name, err)
	}
	return nil
}

// setAddrs replaces the link's global addresses with the planned ones and
// keeps the others (link-local). IPv6 addresses get IFA_F_NODAD: the host
// holds the same address on its side of the pod network only as a mirror,
// and duplicate address detection would hold the guest's back for a while.
func (s *networkService) setAddrs(l netlink.Link, lp linkPlan) error {
	have, err := s.nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("%s: listing the addresses of %s: %w", lp.field, lp.name, err)
	}
	for _, a := range have {
		p, ok := addrPrefix(a.IPNet)
		if !ok {
			continue
		}
		if slices.Contains(lp.addrs, p) {
			if p.Addr().Is4() || (a.Flags&unix.IFA_F_NODAD != 0 && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0) {
				continue
			}
			// An IPv6 address that went through DAD: add it again without.
		} else if a.Scope != int(netlink.SCOPE_UNIVERSE) {
			continue
		}
		if err := s.nl.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("%s: removing %s from %s: %w", lp.field, p, lp.name, err)
		}
	}
	for _, p := range lp.addrs {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := s.nl.AddrReplace(l, a); err != nil {
			return fmt.Errorf("%s: adding %s to %s: %w", lp.field, p, lp.name, err)
		}
	}
	return nil
}

// addRoute adds or replaces one route in the main table, so that a route
// the kernel made for an address is no error.
func (s *networkService) addRoute(r routePlan) error {
	nr := &netlink.Route{
		Dst:      ipNet(r.dst),
		Scope:    r.scope,
		Priority: r.metric,
		Family:   r.family,
		Table:    unix.RT_TABLE_MAIN,
		MTU:      r.mtu,
	}
	if r.onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	if r.gw.IsValid() {
		nr.Gw = net.IP(r.gw.AsSlice())
	}
	if r.src.IsValid() {
		nr.Src = net.IP(r.src.AsSlice())
	}
	if r.device != "" {
		l, err := s.nl.LinkByName(r.device)
		if err != nil {
			return fmt.Errorf("%s: device %s: %w", r.field, r.device, err)
		}
		nr.LinkIndex = l.Attrs().Index
	}
	if err := s.nl.RouteReplace(nr); err != nil {
		return fmt.Errorf("%s: adding the route to %s: %w", r.field, routeString(r), err)
	}
	return nil
}

// setNeigh adds or replaces a permanent neighbour entry.
func (s *networkService) setNeigh(n neighPlan) error {
	l, err := s.nl.LinkByName(n.device)
	if err != nil {
		return fmt.Errorf("%s: device %s: %w", n.field, n.device, err)
	}
	err = s.nl.NeighSet(&netlink.Neigh{
		LinkIndex:    l.Attrs().Index,
		Family:       addrFamily(n.ip),
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(n.ip.AsSlice()),
		HardwareAddr: n.mac,
	})
	if err != nil {
		return fmt.Errorf("%s: setting the neighbour %s (%s) on %s: %w", n.field, n.ip, n.mac, n.device, err)
	}
	return nil
}

// ListInterfaces reports every link of the guest with its addresses.
func (s *networkService) ListInterfaces(ctx context.Context, _ *api.ListInterfacesRequest) (*api.ListInterfacesResponse, error) {
	links, err := s.links()
	if err != nil {
		return nil, err
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return s.nl.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	byLink := map[int][]string{}
	for _, a := range addrs {
		if p, ok := addrPrefix(a.IPNet); ok {
			byLink[a.LinkIndex] = append(byLink[a.LinkIndex], p.String())
		}
	}
	slices.SortFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
	resp := &api.ListInterfacesResponse{}
	for _, l := range links {
		a := l.Attrs()
		resp.Interfaces = append(resp.Interfaces, &api.Interface{
			Name:      a.Name,
			Mac:       a.HardwareAddr.String(),
			Mtu:       uint32(a.MTU),
			Addresses: byLink[a.Index],
			Up:        a.Flags&net.FlagUp != 0,
		})
	}
	return resp, nil
}

// ListRoutes reports the unicast routes of the guest's main table, IPv4
// then IPv6. Other route types (blackhole, unreachable...) have no place
// in api.Route and are left out.
func (s *networkService) ListRoutes(ctx context.Context, _ *api.ListRoutesRequest) (*api.ListRoutesResponse, error) {
	links, err := s.links()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	resp := &api.ListRoutesResponse{}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := retryDump(func() ([]netlink.Route, error) { return s.nl.RouteList(nil, family) })
		if err != nil {
			return nil, fmt.Errorf("listing IPv%d routes: %w", familyNumber(family), err)
		}
		for _, r := range routes {
			if r.Type != unix.RTN_UNICAST {
				continue
			}
			ar := &api.Route{
				Device: names[r.LinkIndex],
				Scope:  uint32(r.Scope),
				Metric: uint32(r.Priority),
				Family: uint32(familyNumber(family)),
				Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0,
				Mtu:    uint32(max(r.MTU, 0)),
			}
			if p, ok := addrPrefix(r.Dst); ok && p.Bits() > 0 {
				ar.Destination = p.Masked().String()
			}
			if a, ok := netip.AddrFromSlice(r.Gw); ok {
				ar.Gateway = a.Unmap().String()
			}
			if a, ok := netip.AddrFromSlice(r.Src); ok {
				ar.Source = a.Unmap().String()
			}
			resp.Routes = append(resp.Routes, ar)
		}
	}
	return resp, nil
}

// links lists every link of the namespace.
func (s *networkService) links() ([]netlink.Link, error) {
	links, err := retryDump(s.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	return links, nil
}

// retryDump runs a netlink dump again when the kernel interrupted it
// because the table changed meanwhile (its result may be incomplete).
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return v, err
		}
	}
}

// addrPrefix turns a netlink address into an address with prefix length.
func addrPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	a = a.Unmap()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// ipNet is the netlink form of an address with prefix length; unlike
// net.ParseCIDR it keeps the host bits.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func routeString(r routePlan) string {
	s := r.dst.String()
	if r.dst.Bits() == 0 {
		s = "default"
	}
	if r.gw.IsValid() {
		s += " via " + r.gw.String()
	}
	if r.device != "" {
		s += " dev " + r.device
	}
	return s
}

// writeResolvConf replaces the resolver configuration at path with data,
// creating its directory if needed: a reader sees the old file or the new
// one, never a part. Every process of every container reads it, so it is
// mode 0644. It is not synced: the guest's files do not outlive the VM.
func writeResolvConf(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { //nolint:gosec // G301: the guest's /etc is world-readable, as everywhere
		return err
	}
	return atomicfile.WriteFunc(path, atomicfile.Options{Perm: 0o644, NoSync: true}, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}
