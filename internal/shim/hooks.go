package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/ocispec"
)

// ownNetNICs is how many NIC hotplug slots a VM reserves when its VMM's
// own network namespace is to be mirrored after boot (the networks of a
// nerdctl container, one interface each): the template NIC slots, so that
// such a VM finds the template of its configuration.
const ownNetNICs = launch.TemplateNICs

// checkHostHooks refuses host hooks to a container of a CRI pod: its spec
// derives from a pod spec, and hull runs no host program for it. A
// container outside a pod may have them; whether they run is
// runtime.host_hooks (checked where the configuration is loaded).
func checkHostHooks(id string, r role, h ocispec.HostHooks) error {
	if h.Empty() || r == roleSingle {
		return nil
	}
	return fmt.Errorf("container %s: a %s's hooks (%s) would run on the host; hull runs host hooks only for containers outside a CRI pod: %w",
		id, r, h.First(), errdefs.ErrNotImplemented)
}

// checkHookNetwork refuses host hooks to a container that joins a network
// namespace by path (mirrored into its VM): the hooks' state would name the
// VMM, which stays in the host's namespace, so a hook that sets up the
// namespace of the PID it is given would set up the host's.
func checkHookNetwork(id string, h ocispec.HostHooks, plan guestPlan) error {
	if h.Empty() || plan.netns == "" {
		return nil
	}
	return fmt.Errorf("container %s joins network namespace %s and has host hooks (%s), whose state would name a process outside it: %w",
		id, plan.netns, h.First(), errdefs.ErrNotImplemented)
}

// ownNetwork takes the new network namespace without a path out of a
// single container's spec that has host hooks: that namespace is the
// VMM's own (hypervisor.Config.OwnNetNS), which the hooks fill as they
// would the container's under runc (nerdctl's CNI hook finds it by the
// PID in their state) and the sandbox then mirrors into the VM, whose own
// namespace the container uses. It reports whether it did.
func ownNetwork(spec *specs.Spec, r role, h ocispec.HostHooks) bool {
	if r != roleSingle || h.Empty() || spec.Linux == nil {
		return false
	}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace && ns.Path == "" {
			spec.Linux.Namespaces = append(spec.Linux.Namespaces[:i:i], spec.Linux.Namespaces[i+1:]...)
			return true
		}
	}
	return false
}

// hookState is the state a container's host hooks read on stdin: the
// VMM's PID stands for the container, as it does in the task API.
func (s *service) hookState(c *container, status specs.ContainerState) specs.State {
	return specs.State{
		Version: specs.Version, ID: c.id, Status: status, Pid: int(s.hostPid()),
		Bundle: c.bundle, Annotations: c.annotations,
	}
}

// warnHooks runs hooks whose failure does not fail the operation
// (poststart, poststop), as runc does, and logs a failure.
func (s *service) warnHooks(ctx context.Context, kind string, c *container, hooks []specs.Hook, status specs.ContainerState) {
	if err := ocispec.RunHooks(ctx, kind, hooks, s.hookState(c, status)); err != nil {
		log.G(ctx).WithError(err).WithField("container", c.id).Warn("host hook failed")
	}
}
