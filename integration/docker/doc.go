// Package docker is hull-runtime's end-to-end suite against Debian's Docker
// 20.10 (the docker.io package): a dockerd started by the suite with an
// isolated data root, exec root and bridge, hull-runtime registered as the
// runtime "hull" in its daemon.json, and the locally built busybox image
// loaded with docker load. It runs containers with docker run (echo and
// exit codes, a terminal, exec, stop, a published port, rm -f) and checks
// that no VM, virtiofsd, supervisor, mount or state is left. The same
// for Debian's Podman 4.3 (rootful, through conmon), with storage, run root
// and networks of its own and hull-runtime named in its containers.conf.
//
// Run it under the e2e lock: flock /tmp/hull-e2e.lock make e2e-docker.
package docker
