// Package hostcgroup manages the host cgroup that holds a sandbox's
// host-side processes: the VMM (QEMU) and virtiofsd with all their threads
// and children. It turns a container's cgroupsPath (containerd's cgroupfs
// form "/kubepods/burstable/pod<uid>/<id>" or the systemd form
// "slice:prefix:name") into a cgroup path, refusing traversal; creates the
// group on cgroup v1 (one directory per mounted hierarchy, a new cpuset
// group given its parent's CPUs and memory nodes) or v2 (enabling the
// controllers it needs in the ancestors' cgroup.subtree_control), or has
// systemd make it as a delegated transient scope (v2 under systemd, for the
// systemd form); sets memory and CPU limits; hands out its v2 directory for
// processes to be started in (CLONE_INTO_CGROUP) and moves process trees
// into it; reads its usage; and removes only what it created. It also
// tells which cgroups, in every mounted hierarchy, the calling process is
// in (SelfDirs), for a process to be moved where it is.
//
// It writes the cgroup files itself, below a root it is given (FS), so that
// tests run against a directory tree standing in for /sys/fs/cgroup. It
// does not use the cgroup managers of opencontainers/cgroups (libcontainer's):
// their Destroy removes the group whether or not they made it (a pod cgroup
// found in place must stay), and their systemd manager starts the scope in
// Apply with a process already running, where here the first child starts
// it and the next are born in it; the v1 and v2 file writes they would
// replace are a few hundred lines, tested here. systemd is reached with
// go-systemd's D-Bus client, behind a small seam for tests (systemdConn).
package hostcgroup
