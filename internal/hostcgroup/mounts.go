package hostcgroup

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// mount is one cgroup file system in /proc/self/mountinfo.
type mount struct {
	// root is the directory of the hierarchy mounted at point ("/" unless
	// a subtree is mounted, as in a cgroup namespace's view).
	root, point string
	// v2 is set for a cgroup2 mount; opts are a v1 mount's super options
	// (its controllers, name=..., rw, ...).
	v2   bool
	opts []string
}

// readMounts reads the cgroup mounts of this host (as this process sees
// them) from /proc/self/mountinfo.
func readMounts() ([]mount, error) {
	f, err := os.Open(filepath.Join(procRoot, "self/mountinfo"))
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	defer func() { _ = f.Close() }()
	m, err := parseMounts(f)
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	return m, nil
}

// parseMounts returns the cgroup and cgroup2 mounts of a mountinfo table,
// in its order.
func parseMounts(r io.Reader) ([]mount, error) {
	var mounts []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch qf[0] {
		case "cgroup2":
			mounts = append(mounts, mount{root: pf[3], point: pf[4], v2: true})
		case "cgroup":
			mounts = append(mounts, mount{root: pf[3], point: pf[4], opts: strings.Split(qf[2], ",")})
		}
	}
	return mounts, sc.Err()
}

// SelfDirs returns the directory of each cgroup the calling process is in,
// in every mounted hierarchy: the v1 ones (named ones too) and the v2 one,
// even one without controllers (a hybrid host's). A hierarchy with no
// mount here, or whose mount does not show the process's cgroup, is
// skipped. It is what a process must join to be where this one is (as a
// claimed warm shim joins the `shim start` that claimed it).
func SelfDirs() ([]string, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(procRoot, "self/cgroup"))
	if err != nil {
		return nil, fmt.Errorf("reading the cgroups of this process: %w", err)
	}
	return dirsOf(string(b), mounts), nil
}

// dirsOf returns the directory of each cgroup that a process whose
// /proc/<pid>/cgroup is procCgroup is in, under mounts, each once.
func dirsOf(procCgroup string, mounts []mount) []string {
	var dirs []string
	for _, line := range strings.Split(procCgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			continue
		}
		ctrls, path := parts[1], parts[2]
		for _, m := range mounts {
			if !m.holds(ctrls) {
				continue
			}
			rel, ok := strings.CutPrefix(path, m.root)
			if m.root == "/" {
				rel, ok = path, true
			}
			if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) || strings.Contains(rel, "..") {
				continue
			}
			if d := filepath.Join(m.point, rel); !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
			break
		}
	}
	return dirs
}

// holds tells whether m is the hierarchy of a /proc/<pid>/cgroup line with
// controllers ctrls ("" for cgroup v2).
func (m mount) holds(ctrls string) bool {
	if ctrls == "" || m.v2 {
		return ctrls == "" && m.v2
	}
	for _, c := range strings.Split(ctrls, ",") {
		if !slices.Contains(m.opts, c) {
			return false
		}
	}
	return true
}
