// Package hostcgroup manages the host cgroup that holds a sandbox's
// host-side processes: the VMM (QEMU) and virtiofsd with all their threads
// and children. It turns a container's cgroupsPath (containerd's cgroupfs
// form "/kubepods/burstable/pod<uid>/<id>" or the systemd form
// "slice:prefix:name") into a cgroup path, refusing traversal; creates the
// group on cgroup v1 (one directory per mounted hierarchy) or v2 (enabling
// the controllers it needs in the ancestors' cgroup.subtree_control); sets
// memory and CPU limits; moves process trees into it; reads its usage; and
// removes only the directories it created.
//
// It writes the cgroup files itself, below a root it is given (FS), so that
// tests run against a directory tree standing in for /sys/fs/cgroup.
package hostcgroup
