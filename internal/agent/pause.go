package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The light pod sandbox process (podsandbox.go makes it) runs two
// programs. First this binary, as "pause-setup", in the namespaces the
// agent made for it: it sets what belongs to those namespaces, makes the
// process's root and drops its privileges. Then, from the thread that
// dropped them, it executes the waiting stage: hull-pause (cmd/hull-pause),
// a static C program with no Go runtime that the guest image holds at
// channel.PauseBinaryPath and the root at /pause. The exec gives the
// process that waits the dropped privileges (capabilities and no_new_privs
// are per thread in Linux), and leaves nothing of the Go runtime behind.

// PauseSetupArg is the first argument of the setup stage.
const PauseSetupArg = "pause-setup"

// pauseSyncFd is the descriptor on which both stages report to the agent:
// the setup stage an error text, the waiting stage one zero byte once it
// runs.
const pauseSyncFd = 3

// pauseBinary is where the waiting stage's binary is in its root.
const pauseBinary = "/pause"

// pauseConfig is what the setup stage is told: what of the pod sandbox's
// spec applies to the process (see docs/security.md#pod-sandbox-process).
type pauseConfig struct {
	Hostname   string            `json:"hostname,omitempty"`
	Domainname string            `json:"domainname,omitempty"`
	Sysctl     map[string]string `json:"sysctl,omitempty"`
	UID        uint32            `json:"uid"`
	GID        uint32            `json:"gid"`
	Groups     []uint32          `json:"groups,omitempty"`
	// Bounding are the capabilities left in the bounding set, which is
	// what a root user keeps across the exec; a non-root user keeps none.
	Bounding []int         `json:"bounding,omitempty"`
	Rlimits  []pauseRlimit `json:"rlimits,omitempty"`
	// CgroupNS asks for a cgroup namespace of its own, rooted at its
	// cgroup.
	CgroupNS bool `json:"cgroupNS,omitempty"`
	// OOMScoreAdj is the spec's process.oomScoreAdj, if it has one.
	OOMScoreAdj *int `json:"oomScoreAdj,omitempty"`
	// Root is an empty directory on which the setup stage mounts the
	// process's root (in its own mount namespace).
	Root string `json:"root"`
	// Bin is the path of the waiting stage's binary
	// (channel.PauseBinaryPath), which the root holds at /pause.
	Bin string `json:"bin"`
}

type pauseRlimit struct {
	Type int    `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

// PauseSetupMain is the setup stage of a pod sandbox process. It does not
// return: it executes the waiting stage, or reports an error and exits 1.
func PauseSetupMain() {
	runtime.LockOSThread()
	sync := os.NewFile(pauseSyncFd, "sync")
	fail := func(err error) {
		_, _ = fmt.Fprintf(sync, "pod sandbox setup: %v", err)
		os.Exit(1)
	}
	if len(os.Args) != 3 {
		fail(fmt.Errorf("want one argument, the configuration, got %d", len(os.Args)-2))
	}
	var cfg pauseConfig
	if err := json.Unmarshal([]byte(os.Args[2]), &cfg); err != nil {
		fail(fmt.Errorf("decoding the configuration: %w", err))
	}
	if err := pauseSetup(&cfg); err != nil {
		fail(err)
	}
	err := syscall.Exec(pauseBinary, []string{pauseBinary}, nil)
	fail(fmt.Errorf("executing %s: %w", pauseBinary, err))
}

// pauseSetup runs on a locked thread of the setup stage.
func pauseSetup(cfg *pauseConfig) error {
	// The thread is in its cgroup already (the clone put it there): the
	// namespace made now has that cgroup as its root.
	if cfg.CgroupNS {
		if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
			return fmt.Errorf("making the cgroup namespace: %w", err)
		}
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("setting the hostname: %w", err)
		}
	}
	if cfg.Domainname != "" {
		if err := unix.Setdomainname([]byte(cfg.Domainname)); err != nil {
			return fmt.Errorf("setting the domain name: %w", err)
		}
	}
	for k, v := range cfg.Sysctl {
		p := filepath.Join("/proc/sys", sysctlFile(k))
		if err := os.WriteFile(p, []byte(v), 0); err != nil {
			return fmt.Errorf("sysctl %s=%q: %w", k, v, err)
		}
	}
	// While still privileged (lowering it needs CAP_SYS_RESOURCE) and
	// before the pivot takes /proc away.
	if cfg.OOMScoreAdj != nil {
		if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(*cfg.OOMScoreAdj)), 0); err != nil {
			return fmt.Errorf("oom_score_adj %d: %w", *cfg.OOMScoreAdj, err)
		}
	}
	for _, r := range cfg.Rlimits {
		if err := unix.Setrlimit(r.Type, &unix.Rlimit{Cur: r.Soft, Max: r.Hard}); err != nil {
			return fmt.Errorf("rlimit %d: %w", r.Type, err)
		}
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	if err := pauseRoot(cfg.Root, cfg.Bin); err != nil {
		return err
	}
	keep := make(map[int]bool, len(cfg.Bounding))
	for _, c := range cfg.Bounding {
		keep[c] = true
	}
	for c := 0; c <= last; c++ {
		if keep[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing the ambient capabilities: %w", err)
	}
	// Inheritable capabilities would pass the exec outside the bounding
	// set for root.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clearing the inheritable capabilities: %w", err)
	}
	// The syscall package changes the IDs of every thread.
	groups := make([]int, len(cfg.Groups))
	for i, g := range cfg.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setting supplementary groups: %w", err)
	}
	if err := syscall.Setgid(int(cfg.GID)); err != nil {
		return fmt.Errorf("setting gid %d: %w", cfg.GID, err)
	}
	if err := syscall.Setuid(int(cfg.UID)); err != nil {
		return fmt.Errorf("setting uid %d: %w", cfg.UID, err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	return nil
}

// lastCap is the highest capability number the kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("reading the last capability: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("reading the last capability: %w", err)
	}
	return n, nil
}

// pauseRoot makes the process's root a read-only tmpfs that holds nothing
// but the waiting stage's binary bin (bound read-only at /pause), and drops
// every other mount from its mount namespace, so that nothing of the guest is reachable
// through the process (/proc/<pid>/root from a container in its PID
// namespace).
func pauseRoot(dir, bin string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV
	if err := unix.Mount("tmpfs", dir, "tmpfs", flags, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mounting the root: %w", err)
	}
	mp := filepath.Join(dir, pauseBinary)
	// The mount point of the binary's bind; the bind's mode is the binary's.
	if err := os.WriteFile(mp, nil, 0o600); err != nil {
		return fmt.Errorf("making %s: %w", pauseBinary, err)
	}
	if err := unix.Mount(bin, mp, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding the binary %s: %w", bin, err)
	}
	if err := unix.Mount("", mp, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
		return fmt.Errorf("making the binary read-only: %w", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("entering the root: %w", err)
	}
	// The old root ends up stacked on the new one, then goes.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("entering the root: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
		return fmt.Errorf("making the root read-only: %w", err)
	}
	return nil
}
