package factory

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// JoinCgroupsOfSelf moves the process pid into the cgroups of the calling
// process, in every hierarchy it is in: a claimed warm shim joins the
// cgroups of the `shim start` that claimed it (containerd's), where a
// cold shim server is born, and leaves the factory's (whose service unit
// may be stopped with its processes).
func JoinCgroupsOfSelf(pid int) error {
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	dirs, err := cgroupDirs(string(cg), string(mi))
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil { //nolint:gosec // G703: paths from the kernel's own cgroup and mount tables
			errs = append(errs, fmt.Errorf("moving pid %d into %s: %w", pid, d, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupMount is a mounted cgroup hierarchy.
type cgroupMount struct {
	// root is the hierarchy's directory mounted at point.
	root, point string
	// v2 is set for the cgroup2 mount; opts are a v1 mount's super
	// options (its controllers, name=...).
	v2   bool
	opts []string
}

// cgroupDirs returns the directory of each cgroup that a process whose
// /proc/<pid>/cgroup is procCgroup is in, under the mounts of mountinfo.
// A hierarchy with no mount here is skipped.
func cgroupDirs(procCgroup, mountinfo string) ([]string, error) {
	var mounts []cgroupMount
	sc := bufio.NewScanner(strings.NewReader(mountinfo))
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		switch g[0] {
		case "cgroup2":
			mounts = append(mounts, cgroupMount{root: f[3], point: f[4], v2: true})
		case "cgroup":
			mounts = append(mounts, cgroupMount{root: f[3], point: f[4], opts: strings.Split(g[2], ",")})
		}
	}
	var dirs []string
	seen := map[string]bool{}
	sc = bufio.NewScanner(strings.NewReader(procCgroup))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			continue
		}
		ctrls, path := parts[1], parts[2]
		for _, m := range mounts {
			if !m.matches(ctrls) {
				continue
			}
			rel, ok := strings.CutPrefix(path, m.root)
			if m.root == "/" {
				rel, ok = path, true
			}
			if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) || strings.Contains(rel, "..") {
				continue
			}
			d := filepath.Join(m.point, rel)
			if !seen[d] {
				seen[d] = true
				dirs = append(dirs, d)
			}
			break
		}
	}
	return dirs, sc.Err()
}

// matches tells whether m is the hierarchy of a /proc/<pid>/cgroup line
// with controllers ctrls ("" for cgroup v2).
func (m cgroupMount) matches(ctrls string) bool {
	if ctrls == "" {
		return m.v2
	}
	if m.v2 {
		return false
	}
	for _, c := range strings.Split(ctrls, ",") {
		if !slices.Contains(m.opts, c) {
			return false
		}
	}
	return true
}
