package hostcgroup

import (
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"
)

// maxPathLen bounds a cgroup path; no real one comes near.
const maxPathLen = 1024

// Resolve returns the cgroup path (absolute, below the cgroup root) that a
// sandbox's host processes live in. With a cgroupsPath from the container's
// spec it is that path: the cgroupfs form as is, the systemd form
// "slice:prefix:name" expanded as systemd lays it out
// ("/a.slice/a-b.slice/<prefix>-<name>.scope"). Without one it is
// "/<parent>/<id>". A path with "..", "." or empty elements, control
// characters, or the root itself is an ErrInvalidArgument-class error.
func Resolve(cgroupsPath, parent, id string) (string, error) {
	if cgroupsPath == "" {
		p := "/" + parent + "/" + id
		if err := checkPath(p); err != nil {
			return "", fmt.Errorf("cgroup parent %q and id %q: %w", parent, id, err)
		}
		return p, nil
	}
	if len(cgroupsPath) > maxPathLen {
		return "", fmt.Errorf("cgroups path of %d bytes: longer than %d: %w", len(cgroupsPath), maxPathLen, errdefs.ErrInvalidArgument)
	}
	if isSystemd(cgroupsPath) {
		p, err := expandSystemd(cgroupsPath)
		if err != nil {
			return "", fmt.Errorf("systemd cgroups path %q: %w", cgroupsPath, err)
		}
		return p, nil
	}
	if err := checkPath(cgroupsPath); err != nil {
		return "", fmt.Errorf("cgroups path %q: %w", cgroupsPath, err)
	}
	return cgroupsPath, nil
}

// isSystemd tells the systemd form "slice:prefix:name" from a cgroupfs
// path, as containerd and runc do: not absolute, with two colons.
func isSystemd(p string) bool {
	return !strings.HasPrefix(p, "/") && strings.Count(p, ":") == 2
}

// checkPath accepts an absolute, clean path below the root whose elements
// are plain names.
func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("not an absolute path: %w", errdefs.ErrInvalidArgument)
	}
	if p == "/" {
		return fmt.Errorf("the root cgroup: %w", errdefs.ErrInvalidArgument)
	}
	for _, e := range strings.Split(p[1:], "/") {
		if err := checkName(e); err != nil {
			return err
		}
	}
	if path.Clean(p) != p {
		return fmt.Errorf("not a clean path: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// checkName accepts one path element.
func checkName(e string) error {
	switch {
	case e == "" || e == "." || e == "..":
		return fmt.Errorf("path element %q: %w", e, errdefs.ErrInvalidArgument)
	case len(e) > 255:
		return fmt.Errorf("path element of %d bytes: %w", len(e), errdefs.ErrInvalidArgument)
	case strings.ContainsAny(e, "/"):
		return fmt.Errorf("path element %q has a slash: %w", e, errdefs.ErrInvalidArgument)
	}
	for _, r := range e {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("path element %q has a control character: %w", e, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// expandSystemd turns "slice:prefix:name" into the directory systemd gives
// that unit: the slice's path, then "<prefix>-<name>.scope" (or name itself
// when it is a slice). An empty slice is system.slice, as with runc.
func expandSystemd(p string) (string, error) {
	parts := strings.Split(p, ":")
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice"
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return "", err
	}
	if name == "" {
		return "", fmt.Errorf("no unit name: %w", errdefs.ErrInvalidArgument)
	}
	unit := name
	if !strings.HasSuffix(name, ".slice") {
		if prefix == "" {
			return "", fmt.Errorf("no unit prefix: %w", errdefs.ErrInvalidArgument)
		}
		unit = prefix + "-" + name + ".scope"
	}
	if err := checkName(unit); err != nil {
		return "", err
	}
	p = path.Join(dir, unit)
	if err := checkPath(p); err != nil {
		return "", err
	}
	return p, nil
}

// expandSlice lays out a slice name as systemd does: "a-b-c.slice" is
// "/a.slice/a-b.slice/a-b-c.slice"; "-.slice" is the root.
func expandSlice(slice string) (string, error) {
	base, ok := strings.CutSuffix(slice, ".slice")
	if !ok || strings.Contains(slice, "/") {
		return "", fmt.Errorf("slice %q: want a name ending in .slice without '/': %w", slice, errdefs.ErrInvalidArgument)
	}
	if base == "-" {
		return "/", nil
	}
	var b strings.Builder
	prefix := ""
	for _, comp := range strings.Split(base, "-") {
		if comp == "" {
			return "", fmt.Errorf("slice %q: empty component: %w", slice, errdefs.ErrInvalidArgument)
		}
		b.WriteString("/" + prefix + comp + ".slice")
		prefix += comp + "-"
	}
	return b.String(), nil
}
