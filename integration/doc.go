// Package integration holds hull's tests that boot real VMs: the real agent in
// real QEMU on the guest image that `make image` builds. They run as root and
// refuse to run, rather than skip, when an asset or tool is missing.
package integration
