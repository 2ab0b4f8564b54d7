#!/usr/bin/env bash
# Build the prototype guest kernel of issue 2 (virtio transport built in, no
# module loads at boot) from Debian's kernel source, reproducibly, into a
# cache directory. Not used by the image builder or CI yet.
#
# Usage: hack/build-kernel.sh [output-dir]
#   needs: apt-get install linux-source-6.1 build-essential bc bison flex \
#          libelf-dev libssl-dev dwarves
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
# rebuilt. Prints the path of the PVH vmlinux (boot it with QEMU -kernel).
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
fi

release=$(cat "$build/include/config/kernel.release")
vmlinux=$cache/vmlinux-$release-$cfg_key
cp "$build/vmlinux" "$vmlinux.tmp" && mv "$vmlinux.tmp" "$vmlinux"
if [[ -n $out ]]; then
	mkdir -p "$out"
	cp "$vmlinux" "$out/vmlinux-$release"
	vmlinux=$out/vmlinux-$release
fi
echo "build-kernel: $(stat -c %s "$vmlinux") bytes, sha256 $(sha256sum "$vmlinux" | cut -c1-64), release $release" >&2
echo "$vmlinux"
