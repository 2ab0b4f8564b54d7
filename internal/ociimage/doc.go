// Package ociimage builds small OCI images locally, with no registry: a
// busybox image from the host's static busybox, written as an OCI layout
// archive that `ctr images import` (and `docker load`-style tools) accept.
// The same busybox with another entrypoint makes the pause image that CRI
// pods use as their sandbox image (PauseOptions).
//
// The output is reproducible: entries are sorted, owned by root, stamped
// with one fixed time, and compressed with a fixed gzip header, so the same
// busybox binary always gives the same digests.
package ociimage
