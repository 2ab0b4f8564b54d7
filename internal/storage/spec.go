package storage

import (
	"encoding/json"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	// GuestSharedDir is where the guest mounts the share.
	GuestSharedDir = "/run/hull/shared"
	// GuestRuntimeDir holds what the agent makes for the sandbox in the
	// guest; a bind mount the host keeps in the guest (see
	// Container.GuestMounts) must have its source below it.
	GuestRuntimeDir = "/run/hull"
	// FSTag is the virtio-fs tag of the share.
	FSTag = "hull"

	rootfsName  = "rootfs"
	volumesName = "volumes"
	// maxVolumeName bounds the basename part of a volume's directory name.
	maxVolumeName = 64
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// ValidateID checks that a container ID can name a directory: 1 to 128
// letters, digits, '_', '.' or '-', not starting with a symbol (so neither
// "." nor ".." nor anything with a "/").
func ValidateID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("container id %q: want 1-128 letters, digits, '_', '.' or '-', not starting with a symbol: %w",
			id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// volume is a bind mount of the spec to make on the host.
type volume struct {
	// index of the mount in spec.Mounts.
	index int
	// source on the host as the spec gives it.
	source string
	// name of the directory or file under volumes/.
	name      string
	recursive bool
	readOnly  bool
}

// GuestRootfs is the guest path of a container's root filesystem.
func GuestRootfs(id string) string {
	return path.Join(GuestSharedDir, id, rootfsName)
}

// isBind reports whether m is a bind mount, and whether it is recursive.
func isBind(m specs.Mount) (bind, recursive bool) {
	for _, o := range m.Options {
		switch o {
		case "rbind":
			return true, true
		case "bind":
			bind = true
		}
	}
	return bind || m.Type == "bind", false
}

// IsBind reports whether a spec mount is a bind mount, as AddContainer
// decides which mounts to share: a "bind" or "rbind" option, or type bind.
func IsBind(m specs.Mount) bool {
	b, _ := isBind(m)
	return b
}

// isReadOnly applies "ro" and "rw" in order; the last one wins.
func isReadOnly(opts []string) bool {
	ro := false
	for _, o := range opts {
		switch o {
		case "ro":
			ro = true
		case "rw":
			ro = false
		}
	}
	return ro
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// volumeName names bind volume i after its source's basename.
func volumeName(i int, source string) string {
	base := unsafeChars.ReplaceAllString(filepath.Base(filepath.Clean(source)), "_")
	if base == "" || base == "." || base == ".." || base == "_" {
		base = "root"
	}
	if len(base) > maxVolumeName {
		base = base[:maxVolumeName]
	}
	return strconv.Itoa(i) + "-" + base
}

// checkHooks rejects the hooks that run in the runtime namespace.
func checkHooks(h *specs.Hooks) error {
	if h == nil {
		return nil
	}
	//nolint:staticcheck // Prestart is deprecated but still honoured by runc.
	for _, hk := range []struct {
		name  string
		hooks []specs.Hook
	}{
		{"prestart", h.Prestart}, {"createRuntime", h.CreateRuntime},
		{"createContainer", h.CreateContainer}, {"poststart", h.Poststart}, {"poststop", h.Poststop},
	} {
		if len(hk.hooks) > 0 {
			return fmt.Errorf("%s hooks (%s) would run on the host; hull runs none: %w",
				hk.name, hk.hooks[0].Path, errdefs.ErrNotImplemented)
		}
	}
	return nil
}

// PodSandboxSpec returns the spec for a pod's sandbox container in the
// guest: a deep copy of spec without its root, its mounts and its hooks.
// The agent makes that container's process on an empty root of its own
// and runs nothing of its image, so nothing of the image or the bundle
// reaches the guest for it: no root is shared, hot-added or copied. Hooks
// that would run on the host are refused as for any container.
func PodSandboxSpec(spec *specs.Spec) (*specs.Spec, error) {
	if spec == nil {
		return nil, fmt.Errorf("no spec: %w", errdefs.ErrInvalidArgument)
	}
	if err := checkHooks(spec.Hooks); err != nil {
		return nil, err
	}
	g, err := copySpec(spec)
	if err != nil {
		return nil, err
	}
	g.Root, g.Mounts, g.Hooks = nil, nil, nil
	return g, nil
}

// copySpec is a deep copy of spec.
func copySpec(spec *specs.Spec) (*specs.Spec, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("copying spec: %w", err)
	}
	var g specs.Spec
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, fmt.Errorf("copying spec: %w", err)
	}
	return &g, nil
}

// guestSpec returns the spec for the guest (a deep copy of spec with the
// root and the bind sources moved under GuestSharedDir) and the bind
// volumes to make on the host. It touches nothing on the host.
func guestSpec(id string, spec *specs.Spec, guestMounts []int) (*specs.Spec, []volume, error) {
	if spec == nil {
		return nil, nil, fmt.Errorf("no spec: %w", errdefs.ErrInvalidArgument)
	}
	if err := checkHooks(spec.Hooks); err != nil {
		return nil, nil, err
	}
	g, err := copySpec(spec)
	if err != nil {
		return nil, nil, err
	}
	if g.Root == nil {
		g.Root = &specs.Root{}
	}
	g.Root.Path = GuestRootfs(id)
	if g.Hooks != nil && len(g.Hooks.StartContainer) == 0 {
		g.Hooks = nil
	}

	inGuest := map[int]bool{}
	for _, i := range guestMounts {
		if i < 0 || i >= len(g.Mounts) {
			return nil, nil, fmt.Errorf("guest mount %d: the spec has %d mounts: %w", i, len(g.Mounts), errdefs.ErrInvalidArgument)
		}
		m := g.Mounts[i]
		if b, _ := isBind(m); !b || !strings.HasPrefix(m.Source, GuestRuntimeDir+"/") || path.Clean(m.Source) != m.Source {
			return nil, nil, fmt.Errorf("guest mount %d (%s): want a bind from below %s, not %q: %w",
				i, m.Destination, GuestRuntimeDir, m.Source, errdefs.ErrInvalidArgument)
		}
		inGuest[i] = true
	}
	var vols []volume
	for i, m := range g.Mounts {
		bind, rec := isBind(m)
		if !bind || inGuest[i] {
			continue
		}
		if m.Source == "" {
			return nil, nil, fmt.Errorf("bind mount %d (%s) has no source: %w", i, m.Destination, errdefs.ErrInvalidArgument)
		}
		v := volume{index: i, source: m.Source, name: volumeName(i, m.Source), recursive: rec, readOnly: isReadOnly(m.Options)}
		vols = append(vols, v)
		g.Mounts[i].Source = path.Join(GuestSharedDir, id, volumesName, v.name)
	}
	return g, vols, nil
}
