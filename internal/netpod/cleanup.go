package netpod

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
)

// Cleanup removes, from the network namespace at nsPath, what a Network
// whose owner died without Close left: the taps named by this package's
// pattern and the ingress qdiscs whose filters are all redirects to such
// taps or to taps already gone. An ingress qdisc without filters is also
// removed (Attach may have died between adding it and its filter). Other
// qdiscs are left alone. A missing namespace is not an error.
func Cleanup(ctx context.Context, nsPath string) error {
	ns, err := openNamespace(nsPath, false)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = ns.Close() }()
	h, err := newHandle(ns)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	defer h.Close()

	links, err := dump(h.LinkList)
	if err != nil {
		return fmt.Errorf("listing the links of %s: %w", nsPath, classify(err))
	}
	ours := map[int]bool{}  // our taps
	alive := map[int]bool{} // every link
	var taps, others []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		alive[a.Index] = true
		switch {
		case tapPattern.MatchString(a.Name) && l.Type() == "tuntap":
			ours[a.Index] = true
			taps = append(taps, l)
		case a.Flags&net.FlagLoopback == 0:
			others = append(others, l)
		}
	}

	var errs []error
	for _, l := range others {
		name := l.Attrs().Name
		ok, err := hasOwnIngress(h, l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		targets, foreign, err := redirects(h, l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		leftover := !foreign
		for _, t := range targets {
			if !ours[t] && alive[t] {
				leftover = false
			}
		}
		if !leftover {
			log.G(ctx).WithField("interface", name).Debug("netpod: ingress qdisc not ours, left alone")
			continue
		}
		if err := delIngress(h, l.Attrs().Index); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the ingress qdisc of %s: %w", name, err))
			continue
		}
		log.G(ctx).WithField("interface", name).Info("netpod: removed a leftover ingress qdisc")
	}
	for _, l := range taps {
		if err := h.LinkDel(l); err != nil && !errdefs.IsNotFound(classify(err)) {
			errs = append(errs, fmt.Errorf("deleting tap %s: %w", l.Attrs().Name, err))
			continue
		}
		log.G(ctx).WithField("tap", l.Attrs().Name).Info("netpod: removed a leftover tap")
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleaning up network namespace %s: %w", nsPath, err)
	}
	return nil
}
