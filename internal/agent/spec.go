package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// cgroupParent is the cgroup under which containers whose spec names no
// cgroups path go.
const cgroupParent = "/hull"

// parseSpec decodes and checks a container's OCI spec. Paths are guest
// paths: the root must exist and be a directory. A pod sandbox's spec has
// no root: its process runs on an empty root of its own.
func parseSpec(id string, b []byte, podSandbox bool) (*specs.Spec, error) {
	var s specs.Spec
	if len(b) == 0 {
		return nil, fmt.Errorf("container %s: empty spec: %w", id, errdefs.ErrInvalidArgument)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("container %s: decoding spec: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	switch {
	case podSandbox && s.Root != nil:
		return nil, fmt.Errorf("container %s: a pod sandbox's spec has a root (%q); it gets none: %w", id, s.Root.Path, errdefs.ErrInvalidArgument)
	case podSandbox:
	case s.Root == nil || s.Root.Path == "":
		return nil, fmt.Errorf("container %s: spec has no root.path: %w", id, errdefs.ErrInvalidArgument)
	default:
		if err := checkGuestPath("root.path", s.Root.Path); err != nil {
			return nil, fmt.Errorf("container %s: %w", id, err)
		}
	}
	if err := checkProcess(s.Process); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if s.Linux.CgroupsPath == "" {
		s.Linux.CgroupsPath = path.Join(cgroupParent, id)
	}
	// The guest has cgroup v2 alone. As runc does on a cgroup-v2 host, each
	// container gets a cgroup namespace of its own, so that a cgroup mount
	// in it (CRI adds one at /sys/fs/cgroup) shows the container's own
	// cgroup with its limits (memory.max, cpu.max), not the guest's root,
	// whatever cgroup version the host runs.
	if !slices.ContainsFunc(s.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == specs.CgroupNamespace }) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	if s.Hooks != nil && (len(s.Hooks.Prestart) > 0 || len(s.Hooks.CreateRuntime) > 0 || //nolint:staticcheck // Prestart is deprecated, still refused
		len(s.Hooks.CreateContainer) > 0 || len(s.Hooks.Poststart) > 0 || len(s.Hooks.Poststop) > 0) {
		return nil, fmt.Errorf("container %s: only startContainer hooks run in the guest: %w", id, errdefs.ErrNotImplemented)
	}
	return &s, nil
}

// checkRootfs checks that the container's root exists as a directory
// (after its storages are mounted).
func checkRootfs(s *specs.Spec) error {
	fi, err := os.Stat(s.Root.Path)
	if err != nil {
		return fmt.Errorf("root.path %s: %w: %w", s.Root.Path, err, errdefs.ErrInvalidArgument)
	}
	if !fi.IsDir() {
		return fmt.Errorf("root.path %s: not a directory: %w", s.Root.Path, errdefs.ErrInvalidArgument)
	}
	return nil
}

// checkProcess checks the fields of an OCI process the agent relies on.
func checkProcess(p *specs.Process) error {
	switch {
	case p == nil:
		return fmt.Errorf("spec has no process: %w", errdefs.ErrInvalidArgument)
	case len(p.Args) == 0 || p.Args[0] == "":
		return fmt.Errorf("process has no args: %w", errdefs.ErrInvalidArgument)
	case p.Cwd == "" || !path.IsAbs(p.Cwd):
		return fmt.Errorf("process cwd %q: not an absolute path: %w", p.Cwd, errdefs.ErrInvalidArgument)
	case p.CommandLine != "":
		return fmt.Errorf("process commandLine is for Windows: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// libcontainerConfig converts the spec with runc's own converter.
func libcontainerConfig(id string, s *specs.Spec) (*configs.Config, error) {
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName: id,
		Spec:       s,
	})
	if err != nil {
		return nil, fmt.Errorf("container %s: converting spec: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	return cfg, nil
}

// newLibcontainerProcess is the libcontainer process of an OCI process.
// The init process takes its capabilities, rlimits and security settings
// from the container's configuration; an exec process from p.
func newLibcontainerProcess(p *specs.Process, init bool) (*libcontainer.Process, error) {
	lp := &libcontainer.Process{
		Args: p.Args,
		Env:  p.Env,
		UID:  int(p.User.UID),
		GID:  int(p.User.GID),
		Cwd:  p.Cwd,
		Init: init,
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	if init {
		return lp, nil
	}
	lp.NoNewPrivileges = &p.NoNewPrivileges
	lp.AppArmorProfile = p.ApparmorProfile
	lp.Label = p.SelinuxLabel
	lp.Scheduler = p.Scheduler
	lp.IOPriority = p.IOPriority
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable,
			Permitted: c.Permitted, Ambient: c.Ambient,
		}
	}
	for _, r := range p.Rlimits {
		t, ok := rlimitTypes[r.Type]
		if !ok {
			return nil, fmt.Errorf("process rlimit %q: unknown: %w", r.Type, errdefs.ErrInvalidArgument)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: r.Hard, Soft: r.Soft})
	}
	aff, err := configs.ConvertCPUAffinity(p.ExecCPUAffinity)
	if err != nil {
		return nil, fmt.Errorf("process execCPUAffinity: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	lp.CPUAffinity = aff
	return lp, nil
}

// rlimitTypes maps the OCI rlimit names to resource numbers.
var rlimitTypes = map[string]int{
	"RLIMIT_AS":         unix.RLIMIT_AS,
	"RLIMIT_CORE":       unix.RLIMIT_CORE,
	"RLIMIT_CPU":        unix.RLIMIT_CPU,
	"RLIMIT_DATA":       unix.RLIMIT_DATA,
	"RLIMIT_FSIZE":      unix.RLIMIT_FSIZE,
	"RLIMIT_LOCKS":      unix.RLIMIT_LOCKS,
	"RLIMIT_MEMLOCK":    unix.RLIMIT_MEMLOCK,
	"RLIMIT_MSGQUEUE":   unix.RLIMIT_MSGQUEUE,
	"RLIMIT_NICE":       unix.RLIMIT_NICE,
	"RLIMIT_NOFILE":     unix.RLIMIT_NOFILE,
	"RLIMIT_NPROC":      unix.RLIMIT_NPROC,
	"RLIMIT_RSS":        unix.RLIMIT_RSS,
	"RLIMIT_RTPRIO":     unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME":     unix.RLIMIT_RTTIME,
	"RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_STACK":      unix.RLIMIT_STACK,
}

// parseExecProcess decodes and checks the OCI process of an exec.
func parseExecProcess(b []byte) (*specs.Process, error) {
	var p specs.Process
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decoding process: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := checkProcess(&p); err != nil {
		return nil, err
	}
	return &p, nil
}

// checkID checks a container or exec id from the host: libcontainer's
// rules (it names a state directory and a cgroup).
func checkID(what, id string) error {
	if id == "" || id == "." || id == ".." || len(id) > 1024 ||
		strings.ContainsFunc(id, func(r rune) bool { return !idRune(r) }) {
		return fmt.Errorf("%s id %q: want 1 to 1024 of [A-Za-z0-9_+.-]: %w", what, id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// idRune tells whether r may appear in an id: [A-Za-z0-9_+.-].
func idRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_+-.", r)
}

// applyPodNetSysctls handles the net.* sysctls of a container that has no
// network namespace of its own. Such a container runs in the guest's
// namespace, which holds the pod's network (the host mirrors it there), so
// its network sysctls are the pod's: they are set in the guest and taken out
// of the spec, where libcontainer would refuse them outside a private
// network namespace. procSys is /proc/sys (a test directory in tests).
func applyPodNetSysctls(ctx context.Context, procSys string, s *specs.Spec) error {
	if s.Linux == nil || len(s.Linux.Sysctl) == 0 {
		return nil
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return nil
		}
	}
	keys := make([]string, 0, len(s.Linux.Sysctl))
	for k := range s.Linux.Sysctl {
		if strings.HasPrefix(k, "net.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		rel := strings.ReplaceAll(k, ".", "/")
		if !fs.ValidPath(rel) {
			return fmt.Errorf("sysctl %q: not a valid name: %w", k, errdefs.ErrInvalidArgument)
		}
		p := filepath.Join(procSys, rel)
		if err := os.WriteFile(p, []byte(s.Linux.Sysctl[k]), 0); err != nil {
			return fmt.Errorf("setting pod sysctl %s=%q: %w: %w", k, s.Linux.Sysctl[k], err, errdefs.ErrInvalidArgument)
		}
		log.G(ctx).WithField("sysctl", k).WithField("value", s.Linux.Sysctl[k]).Debug("pod sysctl set in the guest")
		delete(s.Linux.Sysctl, k)
	}
	return nil
}
