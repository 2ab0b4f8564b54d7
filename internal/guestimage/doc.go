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
// Options.Format FormatErofs also packs the initrd's file tree (plus the
// /etc and /var mount points the agent needs on a read-only root) as a
// read-only erofs image (erofs.go: the tree is staged in a temporary
// directory and mkfs.erofs writes it uncompressed, without inline tails, with
// fixed owners, timestamps and UUID, padded to RootfsAlign). The guest maps
// it through virtio-pmem and mounts it with DAX (KindRootfs), so its pages
// are the host's page cache of the file, shared by every VM. Such an image
// boots without an initrd: the kernel must be a local one with
// rootfsSymbols built in; with a kernel package the build fails with an
// error wrapping errdefs.ErrNotImplemented. FormatExt4 stays reserved and
// fails the same way. docs/guest-images.md describes the whole path.
package guestimage
