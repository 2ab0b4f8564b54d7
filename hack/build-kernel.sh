#!/usr/bin/env bash
# Build the hull kernel, hull's own guest kernel (docs/guest-kernel.md):
# everything the agent and the containers use built in, no module support,
# from Debian's kernel source, reproducibly, into a cache directory.
# `make kernel` runs it; `make image-hullkernel` builds a guest image with it.
#
# Usage: hack/build-kernel.sh [output-dir]
#   needs: apt-get install linux-source-6.1 build-essential bc bison flex \
#          libelf-dev libssl-dev dwarves   (hack/install-deps.sh does)
# Environment:
#   HULL_KERNEL_SOURCE  source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   HULL_KERNEL_CACHE   cache directory (default /var/cache/hull/kernel)
#   JOBS                parallel jobs (default: nproc)
#   HULL_KERNEL_CONFIG_ONLY=1  stop after writing and checking the .config
#                       (prints its path)
#
# The config is `make tinyconfig` plus hack/kernel/hull.config; every value
# the fragment asks for is checked in the final .config. Builds are keyed by
# the source tarball's and the fragment's hashes, so an unchanged input is not
# rebuilt (and nothing is printed on stderr). Prints the path of the PVH
# vmlinux (boot it with QEMU -kernel). Beside it lies the final .config
# (config-<release>), which `hull image build --kernel-config` reads. With an
# output directory, both are copied there as vmlinux-<release> and
# config-<release> (only when they changed), with the links vmlinux and config
# pointing at them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/kernel/hull.config
src_tar=${HULL_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
cache=${HULL_KERNEL_CACHE:-/var/cache/hull/kernel}
jobs=${JOBS:-$(nproc)}
out=${1:-}

if [[ ! -f $src_tar ]]; then
	echo "build-kernel: $src_tar missing; apt-get install linux-source-6.1" >&2
	exit 1
fi
for tool in make gcc bc bison flex; do
	command -v "$tool" >/dev/null || { echo "build-kernel: $tool missing (see the usage in $0)" >&2; exit 1; }
done

src_key=$(sha256sum "$src_tar" | cut -c1-12)
cfg_key=$(cat "$fragment" "$0" | sha256sum | cut -c1-12)
src=$cache/src-$src_key
build=$cache/build-$src_key-$cfg_key
mkdir -p "$cache"

if [[ ! -f $src/Makefile ]]; then
	echo "build-kernel: unpacking $src_tar" >&2
	rm -rf "$src.tmp"
	mkdir -p "$src.tmp"
	tar -xf "$src_tar" -C "$src.tmp" --strip-components=1
	mv "$src.tmp" "$src"
fi

# Reproducible: no host, user, time or build counter in the image.
export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=hull KBUILD_BUILD_HOST=hull KBUILD_BUILD_VERSION=1
mk() { make -s -C "$src" O="$build" ARCH=x86_64 "$@"; }

if [[ ! -f $build/vmlinux ]]; then
	mkdir -p "$build"
	mk tinyconfig >/dev/null
	KCONFIG_CONFIG=$build/.config "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
	mk olddefconfig
	# Every value the fragment sets must have survived the dependencies.
	bad=0
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
			grep -qxF "$line" "$build/.config" || { echo "build-kernel: $line not in the final config: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$build/.config" || echo unset)" >&2; bad=1; }
		elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
			! grep -qE "^${BASH_REMATCH[1]}=" "$build/.config" || { echo "build-kernel: ${BASH_REMATCH[1]} should be off" >&2; bad=1; }
		fi
	done <"$fragment"
	if ((bad)); then
		echo "build-kernel: fix $fragment" >&2
		exit 1
	fi
	[[ -n ${HULL_KERNEL_CONFIG_ONLY:-} ]] && { echo "$build/.config"; exit 0; }
	start=$(date +%s)
	echo "build-kernel: building vmlinux in $build with $jobs jobs" >&2
	mk -j"$jobs" vmlinux
	echo "build-kernel: built in $(( $(date +%s) - start )) s" >&2
	built=1
fi

release=$(cat "$build/include/config/kernel.release")
# install SRC DST: copy unless DST already has the same bytes (keeps its
# mtime, so make sees nothing new), atomically.
install_file() {
	cmp -s "$1" "$2" 2>/dev/null && return 0
	cp "$1" "$2.tmp" && mv "$2.tmp" "$2"
}
vmlinux=$cache/vmlinux-$release-$cfg_key
config=$cache/config-$release-$cfg_key
install_file "$build/vmlinux" "$vmlinux"
install_file "$build/.config" "$config"
if [[ -n $out ]]; then
	mkdir -p "$out"
	install_file "$vmlinux" "$out/vmlinux-$release"
	install_file "$config" "$out/config-$release"
	ln -sfn "vmlinux-$release" "$out/vmlinux"
	ln -sfn "config-$release" "$out/config"
	vmlinux=$out/vmlinux-$release
fi
if [[ -n ${built:-} ]]; then
	echo "build-kernel: $(stat -c %s "$vmlinux") bytes, sha256 $(sha256sum "$vmlinux" | cut -c1-64), release $release" >&2
fi
echo "$vmlinux"
