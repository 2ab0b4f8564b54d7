// Package storage is the host side of a sandbox's shared filesystem: the
// directory tree that one virtiofsd serves to the guest, and the mounts that
// put every container's root filesystem and bind volumes into it.
//
// # Layout
//
// Under the sandbox's state directory (for example /run/hull/<sandbox>):
//
//	mounts/                     host-private working tree; a bind mount of
//	                            itself in a peer group of its own (shared)
//	  <cid>/rootfs              the container's root filesystem
//	  <cid>/volumes/<n>-<name>  bind volume n of the container's spec
//	shared/                     what virtiofsd serves (Shared.Dir): a
//	                            recursive bind of mounts/, read-only at the
//	                            top, slave of mounts/' peer group
//	staging/                    private; used only by the mount(2) fallback
//
// The guest mounts the share (tag FSTag) at GuestSharedDir and finds the same
// tree there: <GuestSharedDir>/<cid>/rootfs and so on.
//
// # Why two trees
//
// virtiofsd with -o sandbox=namespace makes its own mount namespace in which
// every mount is a slave, and pivots into the shared directory; it does so
// when QEMU connects, which is long before the containers of the sandbox
// exist. A mount made on the host afterwards reaches the daemon only if the
// daemon's copy of the shared directory receives propagation. mounts/ is
// therefore a shared mount (made private first, so it forms its own peer
// group and the sandbox's mounts do not spread to every namespace that has a
// copy of /run), shared/ and the daemon's copies of it are its slaves, and
// every container mount is made under mounts/. The real-VM test checks that
// a container added after the guest mounted the share is visible in the
// guest.
//
// shared/ is read-only at its top mount, so through virtiofsd the guest can
// write into container root filesystems and read-write volumes (separate
// mounts, which keep their own flags when propagated) but not into the
// directories that hold them: it cannot replace a mount point with a symlink
// or fill the state directory's filesystem. No host path that the guest can
// change is ever used as a mount target.
//
// # Trust in paths
//
//   - A relative root.path (and a relative bind source) is resolved inside
//     the bundle with openat2(RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS): a
//     symlink or ".." that leaves the bundle is rejected with
//     errdefs.ErrInvalidArgument rather than clamped, since the image may
//     have placed it there. (This is what securejoin's pathrs-lite does on
//     current kernels, minus its clamping.)
//   - An absolute root.path and absolute bind sources come from the container
//     manager, not the image, and are taken as given, except that the last
//     component is never followed if it is a symlink (open_tree with
//     AT_SYMLINK_NOFOLLOW, or O_PATH|O_NOFOLLOW on older kernels; a symlink
//     source is rejected): a source that sits in a directory some container
//     can write cannot be swapped for a link to a host path between the
//     manager's checks and the mount.
//   - Mount destinations inside the container are not resolved on the host
//     at all: the guest resolves them inside the container's root.
//
// # Read-only
//
// A bind volume with "ro" is read-only on the host too, so a guest cannot
// write to it even by talking to virtiofsd directly; with the new mount API
// the detached copy is made read-only (recursively for rbind) before it is
// attached, so there is no moment in which the guest could see it writable.
// (Remounting read-only after the bind would not do: a remount changes one
// mount, not the copies propagation already made in shared/ and in
// virtiofsd's namespace. Without open_tree and mount_setattr, before Linux
// 5.12 or under a seccomp filter, the bind is made and remounted read-only
// in the private staging/ directory and then moved into place, its
// submounts remounted one by one.)
//
// # nosuid, nodev
//
// Every bind (volumes and a bound root, rbind submounts included), the
// overlay or other rootfs mount and shared/ itself are nosuid,nodev on the
// host, set the same way as read-only above. A set-user-ID file or a device
// node in the tree (from the image, or written by the guest) grants nothing
// to a host process that reaches it through the shared tree. The guest is
// unaffected: virtio-fs reports modes as they are and the guest's own mount
// options decide. What virtiofsd itself refuses to create is package
// virtiofs's concern.
// The root filesystem stays writable on the host even when root.readonly is
// set: the container's runtime in the guest must still create mount points
// in it before it remounts it read-only, exactly as runc does on a host, and
// what a compromised guest could write there is the container's own
// writable layer.
//
// # Hooks
//
// OCI hooks that run in the runtime namespace (prestart, createRuntime,
// createContainer, poststart, poststop) would have to run on the host, which
// the guest agent cannot do; AddContainer rejects a spec that has any with
// errdefs.ErrNotImplemented rather than dropping them silently.
// startContainer hooks run in the container and are passed to the guest.
package storage
