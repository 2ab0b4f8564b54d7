// Package guestimage assembles the guest side of a hull sandbox: the kernel
// the VMM boots and the initrd whose /init is hull-agent.
//
// A build runs as a short list of steps, each of which can also be called on
// its own (tests and benchmarks use them to pack another /init with the same
// kernel and modules):
//
//  1. PrepareKernel fetches the Debian kernel package with apt-get download
//     (a metapackage such as linux-image-cloud-amd64 is first resolved to the
//     versioned package it depends on) and unpacks it with dpkg-deb -x into the
//     cache. Nothing is installed on the host; both the .deb and the unpacked
//     tree are cached by package file name.
//  2. Kernel.ExtractVmlinux pulls the uncompressed ELF out of the bzImage
//     payload (the x86 boot protocol setup header says where it is) and checks
//     that it carries the Xen PVH entry note, so QEMU can enter it directly
//     without the real-mode setup and the in-kernel decompressor. When that
//     fails the build ships the bzImage instead and says so in the manifest.
//  3. ResolveModules turns feature names (modlist.Feature*) into root modules
//     and closes them over the "depends=" field of each module's .modinfo
//     section. The package carries no modules.dep (depmod runs at install
//     time), so the builder does the resolution itself; modules that
//     modules.builtin lists are skipped. The order is topological with ties
//     broken by name, which keeps the output deterministic.
//  4. WriteInitrd assembles a file tree (/init, the modules, the module list
//     at modlist.Path, the device node and mount point skeleton, extra files
//     such as the opt-in debug shell at channel.DebugShellPath) and packs it
//     as a newc cpio archive, optionally compressed with zstd, lz4 (the
//     legacy frame the kernel decompresses) or gzip.
//  5. Build writes the kernel, the initrd and manifest.json into the output
//     directory, each atomically (temporary file, then rename), the manifest
//     last. ReadManifest and Manifest.Verify check an installed image.
//
// Same inputs give the same bytes: entries are sorted, owners, timestamps and
// inode numbers are fixed, compressors run single-threaded with fixed
// options, and the manifest holds no timestamps.
//
// # Root filesystem images
//
// Options.Format reserves "erofs" and "ext4": a read-only image with the agent
// as init, mapped into the guest through virtio-pmem or an NVDIMM so that the
// page cache is bypassed (DAX). The initrd path already separates assembling
// the file tree (tree.go) from packing it (cpio.go); an image format adds a
// second packer that takes the same tree and writes the image, plus the
// modules a pmem root needs (the "pmem" feature, and the filesystem module if
// it is not built in, e.g. erofs on Debian's cloud kernel). Until then those
// formats fail with an error wrapping errdefs.ErrNotImplemented.
package guestimage
