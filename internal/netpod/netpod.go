package netpod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/protobuf/proto"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// tapPattern matches the names of the taps this package makes; Cleanup
// deletes taps by it.
var tapPattern = regexp.MustCompile(`^tap[0-9]+_hull$`)

func tapName(i int) string { return fmt.Sprintf("tap%d_hull", i) }

// Network is a pod network namespace mirrored by Attach. Its methods are
// safe for concurrent use.
type Network struct {
	nsPath string
	// req is what Request returns copies of; set by Attach, then read-only.
	req *agent.ConfigureNetworkRequest

	mu sync.Mutex
	// ns keeps the namespace alive and h talks rtnetlink in it; both
	// guarded by mu, closed by Close.
	ns netns.NsHandle
	h  *netlink.Handle
	// mirrors are the mirrored interfaces; guarded by mu, nil once closed.
	mirrors []*mirror
	// closed is set by Close; guarded by mu.
	closed bool
}

// mirror is one interface of the namespace and the tap it is mirrored to.
type mirror struct {
	name  string // the interface's name in the namespace and the guest
	index int
	mac   net.HardwareAddr
	mtu   int

	tapName  string
	tapIndex int
	tap      *os.File
}

// cleanup is a stack of undo steps run in reverse on failure.
type cleanup []func() error

func (c *cleanup) push(f func() error) { *c = append(*c, f) }

func (c cleanup) run(ctx context.Context) {
	for i := len(c) - 1; i >= 0; i-- {
		if err := c[i](); err != nil {
			log.G(ctx).WithError(err).Warn("netpod: rollback step failed")
		}
	}
}

// Option changes what Attach accepts.
type Option func(*options)

type options struct {
	allowOwn bool
	// bounded says that at most maxInterfaces interfaces are mirrored.
	bounded       bool
	maxInterfaces int
}

// MaxInterfaces makes Attach refuse, with an ErrResourceExhausted-class
// error and before it makes any tap, a namespace with more than n
// interfaces to mirror: a VM that gets its NICs by hotplug has only so
// many slots.
func MaxInterfaces(n int) Option {
	return func(o *options) { o.bounded, o.maxInterfaces = true, n }
}

// OwnNamespace lets Attach mirror the calling process's own network
// namespace: one made for the sandbox alone, such as the namespace
// hull-runtime's supervisor is created in for a container. The host's
// (init's) namespace is refused all the same.
func OwnNamespace() Option { return func(o *options) { o.allowOwn = true } }

// Attach mirrors the network namespace at nsPath (such as
// /var/run/netns/cni-..., made by containerd's CRI and set up by CNI) as
// the package documentation describes. A namespace with nothing to mirror
// (only lo) gives a Network without devices. A missing nsPath is
// errdefs.ErrNotFound, one that is not a network namespace
// errdefs.ErrInvalidArgument, an interface that already has an ingress
// qdisc or a tap name in use errdefs.ErrAlreadyExists. On error nothing
// that Attach made is left.
func Attach(ctx context.Context, nsPath string, opts ...Option) (_ *Network, retErr error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	ns, err := openNamespace(nsPath, o.allowOwn)
	if err != nil {
		return nil, err
	}
	var undo cleanup
	defer func() {
		if retErr != nil {
			undo.run(ctx)
		}
	}()
	undo.push(ns.Close)
	h, err := newHandle(ns)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	undo.push(func() error { h.Close(); return nil })

	links, err := dump(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing the links of %s: %w", nsPath, classify(err))
	}
	links = slices.DeleteFunc(links, func(l netlink.Link) bool { return !carriesPodNetwork(ctx, l) })
	if o.bounded && len(links) > o.maxInterfaces {
		return nil, fmt.Errorf("network namespace %s has %d interfaces to mirror, the vm room for %d: %w",
			nsPath, len(links), o.maxInterfaces, errdefs.ErrResourceExhausted)
	}
	n := &Network{nsPath: nsPath, ns: ns, h: h}
	for _, l := range links {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m, err := n.mirror(ctx, l, len(n.mirrors), &undo)
		if err != nil {
			return nil, fmt.Errorf("network namespace %s: mirroring %s: %w", nsPath, l.Attrs().Name, err)
		}
		n.mirrors = append(n.mirrors, m)
	}
	if n.req, err = buildRequest(ctx, h, n.mirrors); err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	for _, m := range n.mirrors {
		log.G(ctx).WithFields(log.Fields{"netns": nsPath, "interface": m.name, "tap": m.tapName}).Debug("netpod: interface mirrored")
	}
	return n, nil
}

// carriesPodNetwork reports whether the link l is one to mirror.
func carriesPodNetwork(ctx context.Context, l netlink.Link) bool {
	a := l.Attrs()
	logger := log.G(ctx).WithField("interface", a.Name)
	switch {
	case a.Flags&net.FlagLoopback != 0:
		return false
	case tapPattern.MatchString(a.Name) && l.Type() == "tuntap":
		logger.Warn("netpod: a tap of ours is already in the namespace; Cleanup removes it")
		return false
	case a.Flags&net.FlagUp == 0:
		logger.Debug("netpod: link down, not mirrored")
		return false
	case a.MasterIndex != 0:
		logger.Debug("netpod: port of another device, not mirrored")
		return false
	case len(a.HardwareAddr) != 6:
		logger.Warn("netpod: link without an Ethernet address, not mirrored")
		return false
	}
	return true
}

// mirror creates the tap number i for the link l and the redirects
// between them, pushing their undoing onto undo.
func (n *Network) mirror(ctx context.Context, l netlink.Link, i int, undo *cleanup) (*mirror, error) {
	a := l.Attrs()
	m := &mirror{
		name:    a.Name,
		index:   a.Index,
		mac:     a.HardwareAddr,
		mtu:     a.MTU,
		tapName: tapName(i),
	}
	tap, err := createTap(n.ns, m.tapName)
	if err != nil {
		return nil, err
	}
	m.tap = tap
	undo.push(tap.Close)
	tl, err := n.h.LinkByName(m.tapName)
	if err != nil {
		return nil, fmt.Errorf("finding tap %s: %w", m.tapName, classify(err))
	}
	m.tapIndex = tl.Attrs().Index
	undo.push(func() error { return n.h.LinkDel(tl) })

	// Without an IPv6 link-local address the namespace's stack sends
	// nothing (router solicitations, MLD) to the guest through the tap.
	if err := n.h.LinkSetIP6AddrGenMode(tl, ip6AddrGenModeNone); err != nil {
		log.G(ctx).WithError(err).WithField("tap", m.tapName).Debug("netpod: cannot turn off IPv6 addresses on the tap")
	}
	if err := n.h.LinkSetMTU(tl, m.mtu); err != nil {
		return nil, fmt.Errorf("setting the MTU of %s to %d: %w", m.tapName, m.mtu, classify(err))
	}
	if err := n.h.LinkSetUp(tl); err != nil {
		return nil, fmt.Errorf("setting %s up: %w", m.tapName, classify(err))
	}
	if err := addIngress(n.h, m.index); err != nil {
		return nil, fmt.Errorf("adding an ingress qdisc to %s (Cleanup removes one left by hull): %w", m.name, err)
	}
	undo.push(func() error { return delIngress(n.h, m.index) })
	if err := addIngress(n.h, m.tapIndex); err != nil {
		return nil, fmt.Errorf("adding an ingress qdisc to %s: %w", m.tapName, err)
	}
	if err := addRedirect(n.h, m.tapIndex, m.index); err != nil {
		return nil, fmt.Errorf("redirecting %s to %s: %w", m.tapName, m.name, err)
	}
	if err := addRedirect(n.h, m.index, m.tapIndex); err != nil {
		return nil, fmt.Errorf("redirecting %s to %s: %w", m.name, m.tapName, err)
	}
	return m, nil
}

// ip6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE of <linux/if_link.h>.
const ip6AddrGenModeNone = 1

// Devices returns one virtio-net device per mirrored interface: ID the
// interface's name, FDs the tap's descriptor (owned by n, valid until
// Close), MAC and MTU the interface's. After Close it returns nil.
func (n *Network) Devices() []hypervisor.NetworkDevice {
	n.mu.Lock()
	defer n.mu.Unlock()
	var ds []hypervisor.NetworkDevice
	for _, m := range n.mirrors {
		ds = append(ds, hypervisor.NetworkDevice{
			ID:      m.name,
			TapName: m.tapName,
			FDs:     []uintptr{m.tap.Fd()},
			MAC:     m.mac.String(),
			MTU:     uint32(m.mtu),
		})
	}
	return ds
}

// Request returns what the guest agent must configure: the mirrored
// interfaces with their global addresses, the routes of the main table
// that the guest's kernel does not make by itself, and the permanent
// neighbour entries. DNS is left unset. The request is the namespace as
// Attach found it, and a new copy each call.
func (n *Network) Request() *agent.ConfigureNetworkRequest {
	return proto.CloneOf(n.req)
}

// Close removes the redirects and the ingress qdiscs from the mirrored
// interfaces, deletes the taps and closes the descriptors. Interfaces that
// are gone (CNI deleted the veth) are skipped. Close is idempotent.
func (n *Network) Close(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	for _, m := range n.mirrors {
		if err := m.remove(ctx, n.h); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range n.mirrors {
		if err := m.tap.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing tap %s: %w", m.tapName, err))
		}
	}
	n.mirrors = nil
	n.h.Close()
	if err := n.ns.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing network namespace %s: %w", n.nsPath, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network namespace %s: %w", n.nsPath, err)
	}
	return nil
}

// remove undoes what mirror made, checking first that the interfaces are
// still the ones it made it on.
func (m *mirror) remove(ctx context.Context, h *netlink.Handle) error {
	var errs []error
	if l, err := h.LinkByIndex(m.index); err == nil && l.Attrs().Name == m.name {
		ok, err := hasOwnIngress(h, l)
		if err == nil && ok {
			err = delIngress(h, m.index)
		}
		if err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the ingress qdisc of %s: %w", m.name, err))
		}
	} else {
		log.G(ctx).WithField("interface", m.name).Debug("netpod: interface gone")
	}
	if l, err := h.LinkByIndex(m.tapIndex); err == nil && l.Attrs().Name == m.tapName {
		if err := h.LinkDel(l); err != nil && !errdefs.IsNotFound(classify(err)) {
			errs = append(errs, fmt.Errorf("deleting tap %s: %w", m.tapName, err))
		}
	}
	return errors.Join(errs...)
}

// dump retries a netlink dump the kernel interrupted (the list changed
// while it was read), which netlink reports with partial results.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var r []T
		if r, err = list(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return r, err
		}
	}
	return nil, err
}
