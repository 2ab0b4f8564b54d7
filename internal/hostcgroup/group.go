package hostcgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/procfs"
)

// Hierarchy is one mounted cgroup v1 hierarchy.
type Hierarchy struct {
	// Mount is where it is mounted ("/sys/fs/cgroup/memory").
	Mount string
	// Controllers it carries ("memory"; "cpu", "cpuacct"; none for a
	// named hierarchy such as name=systemd).
	Controllers []string
}

// FS is where the cgroup file systems are mounted: one cgroup v2 root on a
// unified host, the v1 hierarchies otherwise (the v2 mount of a hybrid
// host carries no controllers and is not used).
type FS struct {
	// Unified is the cgroup2 mount point; empty on v1 hosts.
	Unified string
	// V1 are the v1 hierarchies the group gets a directory in.
	V1 []Hierarchy
}

// v2Controllers are the controllers a group needs on cgroup v2: memory and
// CPU for the limits, pids for accounting.
var v2Controllers = []string{"cpu", "memory", "pids"}

// v1MountOptions are the options of a v1 cgroup mount that name no
// controller (those with a value, "name=systemd", are told apart by '=').
var v1MountOptions = []string{"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods"}

// procRoot is where process information is read; a variable for tests.
var procRoot = "/proc"

// removeDir removes a cgroup directory (which holds only the kernel's
// control files); a variable for tests, whose stand-in directories hold
// real files.
var removeDir = os.Remove

// Host finds the cgroup mounts of this host from /proc/self/mountinfo.
// A cpuset hierarchy mounted with noprefix (whose files lack the
// "cpuset." prefix) is left out.
func Host() (FS, error) {
	mounts, err := readMounts()
	if err != nil {
		return FS{}, err
	}
	var fs FS
	var unified string
	for _, m := range mounts {
		if m.v2 {
			if unified == "" {
				unified = m.point
			}
			continue
		}
		var ctrls []string
		for _, o := range m.opts {
			if !slices.Contains(v1MountOptions, o) && !strings.Contains(o, "=") {
				ctrls = append(ctrls, o)
			}
		}
		if !slices.Contains(ctrls, "cpuset") || !slices.Contains(m.opts, "noprefix") {
			fs.V1 = append(fs.V1, Hierarchy{Mount: m.point, Controllers: ctrls})
		}
	}
	if len(fs.V1) == 0 {
		if unified == "" {
			return FS{}, fmt.Errorf("no cgroup file system mounted: %w", errdefs.ErrNotImplemented)
		}
		fs.Unified = unified
	}
	return fs, nil
}

// Group is one cgroup, in the v2 hierarchy or in every v1 hierarchy of its
// FS. It remembers which of its directories it created: Delete removes
// those and no other.
type Group struct {
	fs   FS
	path string
	// created are the group's directories that Create made (or that
	// systemd made for its scope).
	created []string
	// scope is set when systemd holds the group (CreateUnit).
	scope *scope
}

// Create makes the group at path (from Resolve) with the directories
// missing on the way, and on cgroup v2 enables the cpu, memory and pids
// controllers (those the root offers) in the cgroup.subtree_control of
// each ancestor. A group that exists already is used as it is, and not
// removed by Delete. On error what Create made is removed.
func Create(fs FS, path string) (_ *Group, retErr error) {
	if err := checkPath(path); err != nil {
		return nil, fmt.Errorf("cgroup %q: %w", path, err)
	}
	g := &Group{fs: fs, path: path}
	defer func() {
		if retErr != nil {
			_ = g.Delete()
			retErr = fmt.Errorf("creating cgroup %s: %w", path, retErr)
		}
	}()
	elems := strings.Split(path[1:], "/")
	if fs.Unified != "" {
		want, err := g.available()
		if err != nil {
			return nil, err
		}
		dir := fs.Unified
		for i, e := range elems {
			if err := enable(dir, want); err != nil {
				return nil, err
			}
			dir = filepath.Join(dir, e)
			if err := g.mkdir(dir, i == len(elems)-1); err != nil {
				return nil, err
			}
		}
		return g, nil
	}
	for _, h := range fs.V1 {
		dir := h.Mount
		cpuset := slices.Contains(h.Controllers, "cpuset")
		for i, e := range elems {
			parent := dir
			dir = filepath.Join(dir, e)
			if err := g.mkdir(dir, i == len(elems)-1); err != nil {
				return nil, err
			}
			if cpuset {
				if err := inheritCpuset(parent, dir); err != nil {
					return nil, err
				}
			}
		}
	}
	if g.created == nil {
		return g, nil
	}
	// Charge what QEMU allocated before it moved in to the group, too
	// (v1 only; cgroup v2 never moves charges).
	if d := g.dir("memory"); d != "" {
		_ = writeFile(filepath.Join(d, "memory.move_charge_at_immigrate"), "3")
	}
	return g, nil
}

// Open returns the existing group at path, to add processes to it; Delete
// on it removes nothing.
func Open(fs FS, path string) (*Group, error) {
	if err := checkPath(path); err != nil {
		return nil, fmt.Errorf("cgroup %q: %w", path, err)
	}
	g := &Group{fs: fs, path: path}
	for _, d := range g.dirs() {
		if _, err := os.Stat(d); err != nil {
			return nil, fmt.Errorf("opening cgroup %s: %w", path, err)
		}
	}
	return g, nil
}

// Recorded returns the group at path that a runtime made and recorded
// before it died (the sandbox record's cgroup), held by the systemd scope
// unit when that is not empty: Delete stops the scope (one already gone
// is no error) and removes the group's directory in each hierarchy where
// it still exists, and no ancestor.
func Recorded(fs FS, path, unit string) (*Group, error) {
	if err := checkPath(path); err != nil {
		return nil, fmt.Errorf("cgroup %q: %w", path, err)
	}
	g := &Group{fs: fs, path: path}
	g.created = g.dirs()
	if unit != "" {
		if err := checkName(unit); err != nil || !strings.HasSuffix(unit, ".scope") {
			return nil, fmt.Errorf("systemd unit %q: %w", unit, errdefs.ErrInvalidArgument)
		}
		g.scope = &scope{unit: Unit{Name: unit}, started: true}
	}
	return g, nil
}

// Path is the group's path below the cgroup root.
func (g *Group) Path() string { return g.path }

// Created reports whether Create made the group's own directory (rather
// than finding it): then Delete removes it.
func (g *Group) Created() bool {
	for _, d := range g.dirs() {
		if slices.Contains(g.created, d) {
			return true
		}
	}
	return false
}

// mkdir makes dir unless it exists. A leaf it makes is recorded for
// Delete; ancestors are left in place, as runc leaves them: other groups
// may be made below them at any time.
func (g *Group) mkdir(dir string, leaf bool) error {
	err := os.Mkdir(dir, 0o755) //nolint:gosec // G301: cgroup directories are world-readable as the kernel makes them
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if leaf {
		g.created = append(g.created, dir)
	}
	return nil
}

// inheritCpuset gives a v1 cpuset group with no CPUs or memory nodes
// (as the kernel makes one) its parent's, so that processes can join it
// and stay within the CPUs their pod's cpuset allows (the kubelet's CPU
// manager pins pods there). A group that has its own is left as it is.
func inheritCpuset(parent, dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if strings.TrimSpace(string(b)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(dir, f), strings.TrimSpace(string(v))); err != nil {
			return fmt.Errorf("copying %s from %s: %w", f, parent, err)
		}
	}
	return nil
}

// available is the part of v2Controllers that the v2 root offers.
func (g *Group) available() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(g.fs.Unified, "cgroup.controllers"))
	if err != nil {
		return nil, err
	}
	have := strings.Fields(string(b))
	var want []string
	for _, c := range v2Controllers {
		if slices.Contains(have, c) {
			want = append(want, c)
		}
	}
	return want, nil
}

// enable turns on the controllers in dir's cgroup.subtree_control that are
// not on yet.
func enable(dir string, ctrls []string) error {
	file := filepath.Join(dir, "cgroup.subtree_control")
	b, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	on := strings.Fields(string(b))
	var add []string
	for _, c := range ctrls {
		if !slices.Contains(on, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := writeFile(file, strings.Join(add, " ")); err != nil {
		return fmt.Errorf("enabling %s in %s: %w", strings.Join(add, " "), dir, err)
	}
	return nil
}

// dirs are the group's directories: one on v2, one per hierarchy on v1.
func (g *Group) dirs() []string {
	if g.fs.Unified != "" {
		return []string{filepath.Join(g.fs.Unified, g.path)}
	}
	var ds []string
	for _, h := range g.fs.V1 {
		ds = append(ds, filepath.Join(h.Mount, g.path))
	}
	return ds
}

// dir is the group's directory that has controller: the v2 one when the
// controller is enabled for the group (its cgroup.controllers), or the one
// in the v1 hierarchy carrying it; "" when none does.
func (g *Group) dir(controller string) string {
	if g.fs.Unified != "" {
		d := filepath.Join(g.fs.Unified, g.path)
		b, err := procfs.ReadFile(filepath.Join(d, "cgroup.controllers"), maxStatFile)
		if err != nil || !slices.Contains(strings.Fields(string(b)), controller) {
			return ""
		}
		return d
	}
	for _, h := range g.fs.V1 {
		if slices.Contains(h.Controllers, controller) {
			return filepath.Join(h.Mount, g.path)
		}
	}
	return ""
}

// OpenDir opens the group's cgroup v2 directory, for a child to be started
// in it (CLONE_INTO_CGROUP); on cgroup v1, and for a systemd scope not
// started yet, there is none: nil and no error.
func (g *Group) OpenDir() (*os.File, error) {
	if g.fs.Unified == "" || (g.scope != nil && !g.scope.started) {
		return nil, nil
	}
	return os.OpenFile(filepath.Join(g.fs.Unified, g.path), os.O_RDONLY|unix.O_DIRECTORY, 0)
}

// maxMoveRounds bounds AddTree's passes over a process tree that keeps
// forking.
const maxMoveRounds = 10

// AddTree moves the process pid, with all its threads, and all its
// descendants into the group. The process itself moves first, so that
// what it forks afterwards is born in the group; then each pass moves the
// descendants found, until a pass finds no new one. The first process of
// a systemd scope starts the scope, systemd moving it in.
func (g *Group) AddTree(pid int) error {
	if g.scope != nil && !g.scope.started {
		if err := g.startScope(pid); err != nil {
			return err
		}
	}
	if err := g.add(pid); err != nil {
		return err
	}
	moved := map[int]bool{pid: true}
	for range maxMoveRounds {
		found := false
		for _, d := range descendants(pid) {
			if moved[d] {
				continue
			}
			found = true
			// A child that exited meanwhile is no error.
			if err := g.add(d); err != nil && processExists(d) {
				return err
			}
			moved[d] = true
		}
		if !found {
			return nil
		}
	}
	return fmt.Errorf("moving the children of pid %d into cgroup %s: they keep forking: %w", pid, g.path, errdefs.ErrUnavailable)
}

// add moves one process (all its threads) into every directory of the
// group.
func (g *Group) add(pid int) error {
	for _, d := range g.dirs() {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("moving pid %d into cgroup %s: %w", pid, d, err)
		}
	}
	return nil
}

// descendants lists the processes below pid, from each process's parent
// in /proc/<pid>/stat.
func descendants(pid int) []int {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := parentOf(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// parentOf reads the parent PID from /proc/<pid>/stat; 0 when unknown.
func parentOf(pid int) int {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	f, err := procfs.StatFields(b)
	if err != nil || len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}

func processExists(pid int) bool {
	_, err := os.Stat(filepath.Join(procRoot, strconv.Itoa(pid)))
	return err == nil
}

// Limits are what a group may use. A zero field sets nothing.
type Limits struct {
	// MemoryBytes is the memory limit.
	MemoryBytes int64
	// CPUQuotaUs per CPUPeriodUs is the CPU bandwidth limit.
	CPUQuotaUs  int64
	CPUPeriodUs uint64
}

// SetLimits writes the limits: memory.max and cpu.max on v2,
// memory.limit_in_bytes and cpu.cfs_period_us/cpu.cfs_quota_us on v1. A
// limit whose controller the host lacks is an ErrNotImplemented-class
// error. A systemd scope gets them as unit properties too: at its start
// when it has not started yet (and then only so), else at once.
func (g *Group) SetLimits(l Limits) error {
	if g.scope != nil {
		if err := g.setScopeLimits(l); err != nil {
			return err
		}
		if !g.scope.started {
			return nil
		}
	}
	if l.MemoryBytes > 0 {
		d := g.dir("memory")
		if d == "" {
			return fmt.Errorf("cgroup %s: no memory controller: %w", g.path, errdefs.ErrNotImplemented)
		}
		if err := g.setMemory(d, l.MemoryBytes); err != nil {
			return fmt.Errorf("cgroup %s: setting the memory limit to %d bytes: %w", g.path, l.MemoryBytes, err)
		}
	}
	if l.CPUQuotaUs > 0 && l.CPUPeriodUs > 0 {
		d := g.dir("cpu")
		if d == "" {
			return fmt.Errorf("cgroup %s: no cpu controller: %w", g.path, errdefs.ErrNotImplemented)
		}
		var err error
		if g.fs.Unified != "" {
			err = writeFile(filepath.Join(d, "cpu.max"), fmt.Sprintf("%d %d", l.CPUQuotaUs, l.CPUPeriodUs))
		} else if err = writeFile(filepath.Join(d, "cpu.cfs_period_us"), strconv.FormatUint(l.CPUPeriodUs, 10)); err == nil {
			err = writeFile(filepath.Join(d, "cpu.cfs_quota_us"), strconv.FormatInt(l.CPUQuotaUs, 10))
			// v1 refuses a quota above an ancestor's (v2 takes the
			// smaller): then the ancestor's binds the group already.
			if errors.Is(err, unix.EINVAL) {
				err = writeFile(filepath.Join(d, "cpu.cfs_quota_us"), "-1")
			}
		}
		if err != nil {
			return fmt.Errorf("cgroup %s: setting the cpu quota to %d/%d us: %w", g.path, l.CPUQuotaUs, l.CPUPeriodUs, err)
		}
	}
	return nil
}

// setMemory sets the memory limit in dir and keeps the group out of swap
// where the host accounts it: memory.swap.max 0 on v2; on v1
// memory.memsw.limit_in_bytes (memory and swap together) equal to the
// limit. v1 wants the memory limit at most memsw's at every moment, so a
// limit that grows moves memsw first.
func (g *Group) setMemory(dir string, bytes int64) error {
	v := strconv.FormatInt(bytes, 10)
	if g.fs.Unified != "" {
		if err := writeFile(filepath.Join(dir, "memory.max"), v); err != nil {
			return err
		}
		return writeIfExists(filepath.Join(dir, "memory.swap.max"), "0")
	}
	mem, memsw := filepath.Join(dir, "memory.limit_in_bytes"), filepath.Join(dir, "memory.memsw.limit_in_bytes")
	err := writeFile(mem, v)
	if errors.Is(err, unix.EINVAL) {
		// Above memsw's: raise that first.
		if err := writeIfExists(memsw, v); err != nil {
			return err
		}
		err = writeFile(mem, v)
	}
	if err != nil {
		return err
	}
	return writeIfExists(memsw, v)
}

// writeIfExists writes a control file that only some hosts have (swap
// accounting); a host without it is no error.
func writeIfExists(file, data string) error {
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return writeFile(file, data)
}

// deleteWait bounds Delete's wait for a group whose killed processes have
// not left it yet.
const deleteWait = 10 * time.Second

// Delete removes the group's directories that Create made (never one it
// found, nor an ancestor); a systemd scope is stopped first. A directory still busy (a process not yet gone from it) is retried for a
// few seconds; one already gone is no error.
func (g *Group) Delete() error {
	var errs []error
	if g.scope != nil {
		if err := g.stopScope(); err != nil {
			errs = append(errs, err)
		}
	}
	deadline := time.Now().Add(deleteWait)
	for i := len(g.created) - 1; i >= 0; i-- {
		d := g.created[i]
		for {
			err := removeDir(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	g.created = nil
	return errors.Join(errs...)
}

// writeFile writes a cgroup control file in one write.
func writeFile(file, data string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644) //nolint:gosec // G302: control files of a cgroup the runtime owns
	if err != nil {
		return err
	}
	_, err = f.WriteString(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// MoveCharges has the memory that a process already uses move with it into
// the group, on cgroup v1 (memory.move_charge_at_immigrate: anonymous and
// file pages), and reports whether the kernel does. cgroup v2 never moves
// charges, nor does a recent v1 kernel (charge moving was removed; it refuses the
// setting): what a process used before it moved stays charged where it
// was, and MoveCharges reports false.
func (g *Group) MoveCharges() (bool, error) {
	if g.fs.Unified != "" {
		return false, nil
	}
	d := g.dir("memory")
	if d == "" {
		return false, nil
	}
	err := writeIfExists(filepath.Join(d, "memory.move_charge_at_immigrate"), "3")
	if errors.Is(err, unix.EINVAL) {
		return false, nil
	}
	return err == nil, err
}
