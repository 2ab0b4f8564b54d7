// Package containerd is hull's end-to-end suite against real containerd
// daemons: Debian's containerd 1.6 and a containerd 2.x built from source
// (cached under /var/cache/hull). Each daemon is an isolated instance under
// a temporary directory, driven with its own ctr, running the locally built
// busybox image with runtime io.containerd.hull.v2. After every case it
// checks that no VM, virtiofsd, shim, mount or state directory is left.
package containerd
