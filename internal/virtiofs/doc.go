// Package virtiofs runs the host side of a sandbox's shared filesystem: one
// virtiofsd (the vhost-user file server QEMU's vhost-user-fs device talks
// to) per VM.
//
// Start launches the daemon and returns once its vhost-user socket listens,
// so the caller can start QEMU (or hot-plug the device into a VM restored
// from a template) right after. The daemon is independent of the VM's boot:
// the package knows nothing of QEMU.
//
// Facts about the daemon this package relies on (the C virtiofsd of QEMU
// 7.2, /usr/lib/qemu/virtiofsd on Debian 12):
//
//   - It accepts exactly one vhost-user connection and exits when that
//     connection closes, so one daemon serves one VM, once. Readiness is
//     therefore not probed by connecting (that would consume the one
//     connection) but by finding the socket in the listening state in
//     /proc/<pid>/net/unix.
//   - With -o sandbox=namespace it builds its mount, pid and network
//     namespaces only after the front end connected: it forks a child that
//     is init of the new pid namespace (and dies with its parent through
//     PR_SET_PDEATHSIG), makes every mount a slave, and pivots into the
//     shared directory. Mounts made on the host under the shared directory
//     later reach the daemon only through mount propagation; see package
//     storage for the layout that provides it.
//   - -o cache=auto is the default here: cache=none makes MAP_SHARED mmap
//     in the guest fail with ENODEV.
//
// The daemon's stderr goes to a log bounded by Config.LogMax (child.LogFile:
// one current file and one rotated part): with debug logging the daemon
// writes a line per guest request, so the guest drives its volume.
// The daemon runs without CAP_MKNOD, CAP_FSETID and CAP_SETFCAP
// (-o modcaps) and under a seccomp filter the runtime installs on the thread
// that forks it (seccomp.go): whatever the guest asks, it creates no device
// node and no set-user-ID or set-group-ID file on the host.
//
// The daemon gets PR_SET_PDEATHSIG(SIGKILL) from a goroutine locked to the
// OS thread that forked it and waits for it, the approach of the QEMU
// driver: a shim that dies without calling Stop does not leak it.
package virtiofs
