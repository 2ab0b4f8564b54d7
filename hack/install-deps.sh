#!/usr/bin/env bash
# Installs what building and testing hull needs on Debian 12 / Ubuntu:
# Debian packages (only those missing, so a second run is quick) and the
# pinned Go code generators. Needs root for apt-get.
set -euo pipefail

packages=(
	qemu-system-x86      # the hypervisor; also ships /usr/lib/qemu/virtiofsd
	busybox-static       # trivial guest inits for tests and the boot-time floor
	protobuf-compiler    # protoc for `make protos`
	libprotobuf-dev      # well-known .proto types (duration, timestamp)
	libseccomp-dev       # static libseccomp for the agent (libcontainer)
	erofs-utils          # rootfs images
	iproute2             # ip and tc, for the pod-network tests
	containernetworking-plugins # CNI bridge/host-local/loopback in /usr/lib/cni for the CRI e2e suite
	containerd           # the e2e suite and the demo drive a real containerd (1.6 here)
	runc                 # runc comparison in the benchmarks
	cpio
	kmod                 # modinfo, for checking module dependency resolution
	procps               # pgrep/ps for leak checks
	psmisc
	make
	gcc
	libc6-dev
	git
	ca-certificates
)
# The hull kernel (`make kernel`, hack/build-kernel.sh) is built from Debian
# 12's kernel source; elsewhere (Ubuntu) that package does not exist and only
# `make kernel` and what needs it fail.
kernel_packages=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev dwarves)
if grep -qx 'ID=debian' /etc/os-release 2>/dev/null || apt-cache show linux-source-6.1 >/dev/null 2>&1; then
	packages+=("${kernel_packages[@]}")
else
	echo "install-deps: linux-source-6.1 is not available here: the hull kernel (make kernel) cannot be built" >&2
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "install-deps: need root to install: ${missing[*]}" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
	echo "install-deps: Go is not installed (need Go >= $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod"))" >&2
	exit 1
fi

# The generators are pinned in the Makefile and installed under _output/tools.
make -s -C "$(dirname "$0")/.." tools
