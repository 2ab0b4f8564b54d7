#!/usr/bin/env bash
# Build the hull kernel, hull's own guest kernel (docs/guest-kernel.md):
# everything the agent and the containers use built in, no module support,
# from the distribution's kernel source package, reproducibly, into a cache
# directory. `make kernel` runs it; `make image-hullkernel` builds a guest
# image with it.
#
# Usage: hack/build-kernel.sh [output-dir]
#   needs: apt-get install linux-source build-essential bc bison flex \
#          libelf-dev libssl-dev dwarves xz-utils bzip2
#          (hack/install-deps.sh does)
# Environment:
#   HULL_KERNEL_SOURCE  source tarball (default: the newest
#                       /usr/src/linux-source-<version>.tar.{xz,bz2}, also
#                       looked for in /usr/src/linux-source-<version>/ as
#                       Ubuntu ships it). Tested with Debian 12's 6.1.
#   HULL_KERNEL_CACHE   cache directory (default /var/cache/hull/kernel)
#   JOBS                parallel jobs (default: nproc)
#   HULL_KERNEL_CONFIG_ONLY=1  stop after writing and checking the .config
#                       (prints its path)
#
# The config is `make tinyconfig` plus hack/kernel/hull.config; every value
# the fragment asks for is checked in the final .config. Builds are keyed by
# the source tarball's hash and by the hash of the fragment, this script and
# the toolchain's identity (gcc, ld, pahole), so an unchanged input is not
# rebuilt (and nothing is printed on stderr). The build sees none of the
# caller's environment (an outer make's MAKEFLAGS and variables, KCFLAGS,
# LLVM, CC, KBUILD_*, LOCALVERSION, ...) but PATH, HOME, TMPDIR, TERM and the
# variables below. Runs sharing a cache are serialized
# by a lock; a successful build removes the older builds of the same source.
# Prints the path of the PVH vmlinux (boot it with QEMU -kernel). Beside it
# lies the final .config (config-<release>), which `hull image build
# --kernel-config` reads. With an output directory, both are copied there as
# vmlinux-<release> and config-<release> (only when they changed), with the
# links vmlinux and config pointing at them.
set -euo pipefail

# Nothing from the caller's environment reaches the kernel's make but what
# this script sets: an outer make exports its flags and its command-line
# variables (MAKEFLAGS, MAKEOVERRIDES, FOO=bar), and Kbuild reads many
# variables from the environment (KCFLAGS, KCPPFLAGS, KAFLAGS, LLVM, CC,
# CROSS_COMPILE, LOCALVERSION, KBUILD_*, ...). Any of them would change the
# build without changing the cache key, so the script runs again in an
# environment of only what it needs.
if [[ -z ${HULL_BUILD_KERNEL_CLEAN_ENV:-} ]]; then
	keep=(HULL_BUILD_KERNEL_CLEAN_ENV=1)
	for var in PATH HOME TMPDIR TERM HULL_KERNEL_SOURCE HULL_KERNEL_CACHE HULL_KERNEL_CONFIG_ONLY JOBS; do
		if [[ -n ${!var+set} ]]; then
			keep+=("$var=${!var}")
		fi
	done
	exec env -i "${keep[@]}" "$BASH" "$0" "$@"
fi
unset HULL_BUILD_KERNEL_CLEAN_ENV
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/kernel/hull.config
cache=${HULL_KERNEL_CACHE:-/var/cache/hull/kernel}
jobs=${JOBS:-$(nproc)}
out=${1:-}

# find_source prints the newest linux-source-<version>.tar.{xz,bz2} under
# /usr/src (Debian: /usr/src/linux-source-6.1.tar.xz; Ubuntu:
# /usr/src/linux-source-6.8.0/linux-source-6.8.0.tar.bz2).
find_source() {
	local f name
	shopt -s nullglob
	for f in /usr/src/linux-source-*.tar.xz /usr/src/linux-source-*.tar.bz2 \
		/usr/src/linux-source-*/linux-source-*.tar.xz /usr/src/linux-source-*/linux-source-*.tar.bz2; do
		name=${f##*/linux-source-}
		name=${name%.tar.*}
		[[ $name =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] && printf '%s\t%s\n' "$name" "$f"
	done | sort -t $'\t' -V -k1,1 | tail -n1 | cut -f2
	shopt -u nullglob
}
src_tar=${HULL_KERNEL_SOURCE:-$(find_source)}
if [[ -z $src_tar ]]; then
	echo "build-kernel: no kernel source tarball (/usr/src/linux-source-<version>.tar.xz or .tar.bz2); apt-get install linux-source, or set HULL_KERNEL_SOURCE" >&2
	exit 1
fi
if [[ ! -f $src_tar ]]; then
	echo "build-kernel: $src_tar missing; apt-get install linux-source, or set HULL_KERNEL_SOURCE" >&2
	exit 1
fi
for tool in make gcc ld bc bison flex flock; do
	command -v "$tool" >/dev/null || { echo "build-kernel: $tool missing (see the usage in $0)" >&2; exit 1; }
done

# The toolchain is an input too: a different compiler, linker or pahole makes
# a different vmlinux.
toolchain() {
	gcc --version | sed -n 1p
	ld --version | sed -n 1p
	if command -v pahole >/dev/null; then pahole --version; else echo "no pahole"; fi
}
src_key=$(sha256sum "$src_tar" | cut -c1-12)
cfg_key=$({ cat "$fragment" "$0"; toolchain; } | sha256sum | cut -c1-12)
src=$cache/src-$src_key
build=$cache/build-$src_key-$cfg_key
# A build is complete when this exists (make may leave a vmlinux behind when
# it is interrupted).
stamp=$build/.hull-built
mkdir -p "$cache"

# One run at a time per cache: the unpacking, the build and the copies below
# must not interleave with another run's.
exec {lock_fd}>>"$cache/.lock"
if ! flock -n "$lock_fd"; then
	echo "build-kernel: waiting for another build using $cache" >&2
	flock "$lock_fd"
fi

if [[ ! -f $src/Makefile ]]; then
	echo "build-kernel: unpacking $src_tar" >&2
	rm -rf "$src" "$src".tmp.*
	tmp_src=$(mktemp -d "$src.tmp.XXXXXX")
	tar -xf "$src_tar" -C "$tmp_src" --strip-components=1
	chmod 0755 "$tmp_src"
	mv -T "$tmp_src" "$src"
fi

# Reproducible: no host, user, time or build counter in the image.
export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=hull KBUILD_BUILD_HOST=hull KBUILD_BUILD_VERSION=1
mk() { make -s -C "$src" O="$build" ARCH=x86_64 "$@"; }

# progress LOG START copies the build's output into LOG and prints, every
# 30 s, how many files were compiled so far (about 1,300 for Debian 12's
# 6.1 with this config) and the time since START.
progress() {
	local log=$1 start=$2 line n=0 last=$SECONDS
	: >"$log"
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$log"
		[[ $line == "  CC "* ]] && n=$((n + 1))
		if ((SECONDS - last >= 30)); then
			last=$SECONDS
			echo "build-kernel: $n files compiled, $(($(date +%s) - start)) s" >&2
		fi
	done
}

if [[ ! -f $stamp ]]; then
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
		echo "build-kernel: fix $fragment (tested with Debian 12's 6.1 source; $src_tar may be another version)" >&2
		exit 1
	fi
	[[ -n ${HULL_KERNEL_CONFIG_ONLY:-} ]] && { echo "$build/.config"; exit 0; }
	start=$(date +%s)
	log=$build/build.log
	echo "build-kernel: building vmlinux in $build with $jobs jobs; about 12 minutes on 2 idle cores (full log: $log)" >&2
	rm -f "$build/vmlinux"
	# Kbuild's short lines ("  CC      kernel/fork.o") go to the log; a
	# progress line every 30 s says how far the build is.
	if ! make -C "$src" O="$build" ARCH=x86_64 -j"$jobs" vmlinux 2>&1 | progress "$log" "$start"; then
		echo "build-kernel: the build failed; the end of $log:" >&2
		tail -n 40 "$log" >&2
		exit 1
	fi
	: >"$stamp"
	echo "build-kernel: built in $(( $(date +%s) - start )) s" >&2
	built=1
fi
[[ -n ${HULL_KERNEL_CONFIG_ONLY:-} ]] && { echo "$build/.config"; exit 0; }

release=$(cat "$build/include/config/kernel.release")
# install SRC DST: copy unless DST already has the same bytes (keeps its
# mtime, so make sees nothing new), atomically through a new temporary file
# beside DST (never a fixed name another process could have planted).
install_file() {
	cmp -s "$1" "$2" 2>/dev/null && return 0
	local tmp
	tmp=$(mktemp "$(dirname "$2")/.$(basename "$2").tmp.XXXXXX")
	if ! cp "$1" "$tmp" || ! chmod 0644 "$tmp" || ! mv -fT "$tmp" "$2"; then
		rm -f "$tmp"
		return 1
	fi
}
vmlinux=$cache/vmlinux-$release-$cfg_key
config=$cache/config-$release-$cfg_key
install_file "$build/vmlinux" "$vmlinux"
install_file "$build/.config" "$config"

# The cache keeps one build per source: the other builds of this source (older
# fragments, scripts or toolchains, and partial ones) and their copies go.
shopt -s nullglob
for old in "$cache/build-$src_key-"*; do
	[[ $old == "$build" ]] && continue
	old_key=${old##*-}
	rm -rf "$old"
	rm -f "$cache/vmlinux-"*"-$old_key" "$cache/config-"*"-$old_key"
done
rm -f "$cache"/.vmlinux-*.tmp.* "$cache"/.config-*.tmp.*
shopt -u nullglob

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
