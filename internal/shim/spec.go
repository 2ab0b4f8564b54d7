package shim

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/netpod"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/storage"
)

// Annotations that group the containers of a pod in one sandbox: CRI's and
// CRI-O's.
var sandboxAnnotations = []string{
	"io.kubernetes.cri.sandbox-id",
	"io.kubernetes.cri-o.SandboxID",
}

// Annotations that say whether a container is a pod's sandbox or one of its
// workloads, with the values both use.
var containerTypeAnnotations = []string{
	"io.kubernetes.cri.container-type",
	"io.kubernetes.cri-o.ContainerType",
}

// podUIDAnnotation is the Kubernetes pod's UID, which containerd's CRI
// writes on each of the pod's containers (CRI-O writes none). It names the
// kubelet's directories of the pod's emptyDir volumes.
const podUIDAnnotation = "io.kubernetes.cri.sandbox-uid"

const (
	containerTypeSandbox   = "sandbox"
	containerTypeContainer = "container"
)

// role is a container's place in its pod.
type role int

const (
	// roleSingle is a container outside any pod (ctr run): it is a pod of
	// one, its own sandbox.
	roleSingle role = iota
	// rolePodSandbox is a pod's sandbox ("pause") container: the first of
	// the pod, whose namespaces the others join.
	rolePodSandbox
	// rolePodMember is a workload container of a pod.
	rolePodMember
)

func (r role) String() string {
	switch r {
	case rolePodSandbox:
		return "pod sandbox"
	case rolePodMember:
		return "pod container"
	}
	return "single container"
}

// sandboxID returns the sandbox a container belongs to: its pod's, or its
// own for a container that is a pod of one.
func sandboxID(id string, annotations map[string]string) string {
	for _, a := range sandboxAnnotations {
		if v := annotations[a]; v != "" {
			return v
		}
	}
	return id
}

// containerRole reads the container-type annotations. An unknown type is an
// error rather than a guess.
func containerRole(annotations map[string]string) (role, error) {
	for _, a := range containerTypeAnnotations {
		switch v, ok := annotations[a]; {
		case !ok:
			continue
		case v == containerTypeSandbox:
			return rolePodSandbox, nil
		case v == containerTypeContainer:
			return rolePodMember, nil
		default:
			return 0, fmt.Errorf("annotation %s=%q: want %q or %q: %w", a, v, containerTypeSandbox, containerTypeContainer, errdefs.ErrInvalidArgument)
		}
	}
	return roleSingle, nil
}

// guestPlan is what a container's spec asks of the VM beyond the container
// itself.
type guestPlan struct {
	// netns is the host network namespace to mirror into the VM (the pod's,
	// set up by CNI); empty for none.
	netns string
	// ownNetNS says the VMM gets a network namespace of its own, which
	// the container's host hooks fill and the sandbox mirrors into the VM
	// after boot (ownNetwork).
	ownNetNS bool
	// shmSource is the host source of the pod sandbox's /dev/shm bind,
	// which the pod's containers share; empty when it has none.
	shmSource string
	// guestMounts are the indices of mounts rewritten to guest sources.
	guestMounts []int
}

// podSpec turns a container's spec into the one the guest runs, in place:
//
//   - Network: the VM is the pod. A pod sandbox's or a single container's
//     network namespace with a path (the pod's, made by CNI) is mirrored
//     into the VM, and the container uses the guest's own namespace, which
//     then holds the pod network; a pod member always uses the guest's
//     namespace. A new namespace without a path stays: an isolated one, as
//     under runc.
//   - IPC, UTS and PID: a pod member joins the namespaces of its pod's
//     sandbox container by the /proc/<pid>/ns paths containerd writes, with
//     the PID this shim reported for it: the VMM's host PID (see pids.go).
//     The path is rewritten to the sandbox container's init in the guest. A
//     path that names any other PID cannot be joined from a VM.
//   - /dev/shm: the pod shares one tmpfs in the guest (sandbox.GuestShmDir)
//     instead of the host tmpfs containerd made.
//
// guestNsPid maps a PID this shim reported (the VMM's) to the guest PID of
// the pod's sandbox container's init, false for any other PID; podShm is
// the pod's /dev/shm source recorded from its sandbox.
func podSpec(spec *specs.Spec, r role, guestNsPid func(uint32) (uint32, bool), podShm string) (guestPlan, error) {
	var plan guestPlan
	if spec.Linux != nil {
		kept := spec.Linux.Namespaces[:0:0]
		for _, ns := range spec.Linux.Namespaces {
			switch {
			case r == rolePodSandbox && ns.Type == specs.UserNamespace:
				// containerd then leaves the network namespace to the
				// runtime and sets CNI up in /proc/<pid>/ns/net of the
				// PID we report: the VMM's, whose network namespace is
				// the host's.
				return guestPlan{}, fmt.Errorf("pod user namespaces (hostUsers: false) are not supported by hull: %w", errdefs.ErrNotImplemented)
			case r == rolePodSandbox && ns.Type == specs.NetworkNamespace && ns.Path == "":
				return guestPlan{}, fmt.Errorf("a pod sandbox whose network namespace the runtime must create is not supported (containerd would set up CNI in a host process's namespace): %w", errdefs.ErrNotImplemented)
			case ns.Type == specs.NetworkNamespace && r == rolePodMember:
				continue
			case ns.Type == specs.NetworkNamespace && ns.Path != "":
				plan.netns = ns.Path
				continue
			case ns.Path == "":
			case r != rolePodMember:
				return guestPlan{}, fmt.Errorf("%s namespace %q: a %s cannot join a host namespace from a VM: %w", ns.Type, ns.Path, r, errdefs.ErrInvalidArgument)
			default:
				pid, ok := nsPathPID(ns.Path, ns.Type)
				var guest uint32
				if ok {
					guest, ok = guestNsPid(pid)
				}
				if !ok {
					return guestPlan{}, fmt.Errorf("%s namespace %q: names no container of this pod: %w", ns.Type, ns.Path, errdefs.ErrInvalidArgument)
				}
				ns.Path = fmt.Sprintf("/proc/%d/ns/%s", guest, nsKinds[ns.Type])
			}
			kept = append(kept, ns)
		}
		spec.Linux.Namespaces = kept
	}
	for i, m := range spec.Mounts {
		if path.Clean(m.Destination) != "/dev/shm" || !storage.IsBind(m) {
			continue
		}
		switch {
		case r == rolePodSandbox:
			plan.shmSource = m.Source
		case r == rolePodMember && podShm != "" && m.Source == podShm:
		default:
			continue
		}
		spec.Mounts[i].Source = sandbox.GuestShmDir
		plan.guestMounts = append(plan.guestMounts, i)
	}
	return plan, nil
}

// nsKinds are the names of the namespace types in /proc/<pid>/ns.
var nsKinds = map[specs.LinuxNamespaceType]string{
	specs.PIDNamespace: "pid", specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts",
	specs.UserNamespace: "user", specs.CgroupNamespace: "cgroup", specs.MountNamespace: "mnt",
	specs.TimeNamespace: "time",
}

// nsPathPID parses /proc/<pid>/ns/<kind> for a namespace type.
func nsPathPID(p string, t specs.LinuxNamespaceType) (uint32, bool) {
	kind := nsKinds[t]
	rest, ok := strings.CutPrefix(p, "/proc/")
	if !ok || kind == "" {
		return 0, false
	}
	num, tail, ok := strings.Cut(rest, "/")
	if !ok || tail != "ns/"+kind {
		return 0, false
	}
	pid, err := strconv.ParseUint(num, 10, 32)
	if err != nil || pid == 0 {
		return 0, false
	}
	return uint32(pid), true
}

// specDNS reads the resolv.conf that the spec binds into the container
// (containerd's per-pod file) for the guest; nil when there is none.
func specDNS(spec *specs.Spec) (*agent.DNS, error) {
	for _, m := range spec.Mounts {
		if path.Clean(m.Destination) != "/etc/resolv.conf" || !storage.IsBind(m) {
			continue
		}
		if !path.IsAbs(m.Source) {
			return nil, nil
		}
		dns, err := netpod.ParseResolvConf(m.Source)
		if err != nil {
			return nil, fmt.Errorf("the pod's resolv.conf: %w", err)
		}
		return dns, nil
	}
	return nil, nil
}

// tmpfsSize is the size in bytes of the tmpfs mounted at p, or zero when p
// is empty or not a tmpfs.
func tmpfsSize(p string) uint64 {
	if p == "" {
		return 0
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return 0
	}
	return st.Blocks * uint64(st.Bsize)
}
