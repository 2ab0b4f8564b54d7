package netpod

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ingressHandle is the ingress qdisc's handle, "ffff:", and the parent of
// the filters attached to it.
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// filterPriority is the priority (preference) of the redirect filters.
const filterPriority = 1

func ingressQdisc(index int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: index,
		Handle:    ingressHandle,
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

// addIngress adds an ingress qdisc to the link index. An existing one is
// errdefs.ErrAlreadyExists: it is not ours to take over.
func addIngress(h *netlink.Handle, index int) error {
	if err := h.QdiscAdd(ingressQdisc(index)); err != nil {
		return classify(err)
	}
	return nil
}

// delIngress deletes the ingress qdisc of the link index, and with it the
// filters attached to it.
func delIngress(h *netlink.Handle, index int) error {
	if err := h.QdiscDel(ingressQdisc(index)); err != nil {
		return classify(err)
	}
	return nil
}

// hasOwnIngress reports whether link has a plain ingress qdisc, the kind
// Attach adds: a clsact qdisc, which sits at the same parent, is someone
// else's and is never removed.
func hasOwnIngress(h *netlink.Handle, link netlink.Link) (bool, error) {
	qs, err := dump(func() ([]netlink.Qdisc, error) { return h.QdiscList(link) })
	if err != nil {
		return false, fmt.Errorf("listing the qdiscs of %s: %w", link.Attrs().Name, classify(err))
	}
	for _, q := range qs {
		if q.Attrs().LinkIndex == link.Attrs().Index && q.Attrs().Parent == netlink.HANDLE_INGRESS && q.Type() == "ingress" {
			return true, nil
		}
	}
	return false, nil
}

// addRedirect attaches to the ingress qdisc of the link from a u32 filter
// that matches every frame and redirects it to the egress of the link to:
// `tc filter add dev FROM parent ffff: protocol all prio 1 u32 match u32 0 0
// action mirred egress redirect dev TO`.
func addRedirect(h *netlink.Handle, from, to int) error {
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    ingressHandle,
			Priority:  filterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		// One all-zero key: "match u32 0 0", every frame.
		Sel: &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: []netlink.TcU32Key{{}}},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to,
		}},
	}
	if err := h.FilterAdd(f); err != nil {
		return classify(err)
	}
	return nil
}

// redirects lists the ingress filters of link. targets are the interface
// indexes that u32 filters redirect to (0 for a target that is gone);
// foreign reports a filter that is not such a redirect.
func redirects(h *netlink.Handle, link netlink.Link) (targets []int, foreign bool, err error) {
	fs, err := dump(func() ([]netlink.Filter, error) { return h.FilterList(link, ingressHandle) })
	if err != nil {
		return nil, false, fmt.Errorf("listing the ingress filters of %s: %w", link.Attrs().Name, classify(err))
	}
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok {
			return nil, true, nil
		}
		if u.Sel == nil {
			// u32's hash table node, made with the first filter.
			continue
		}
		if len(u.Actions) != 1 {
			return nil, true, nil
		}
		m, ok := u.Actions[0].(*netlink.MirredAction)
		if !ok || m.MirredAction != netlink.TCA_EGRESS_REDIR {
			return nil, true, nil
		}
		targets = append(targets, m.Ifindex)
	}
	return targets, false, nil
}
