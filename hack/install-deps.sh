#!/usr/bin/env bash
# Installs what building and testing hull needs on Debian 12 (tested) or
# another Debian or Ubuntu release:
# Debian packages (only those missing, so a second run is quick) and the
# pinned Go code generators. Needs root for apt-get.
set -euo pipefail

packages=(
	qemu-system-x86      # the hypervisor; also ships /usr/lib/qemu/virtiofsd
	busybox-static       # trivial guest inits for tests and the boot-time floor
	protobuf-compiler    # protoc for `make protos`
	libprotobuf-dev      # well-known .proto types (duration, timestamp)
	libseccomp-dev       # static libseccomp for the agent (libcontainer)
	erofs-utils          # rootfs images; mkfs.erofs for containerd's erofs snapshotter in the e2e suite
	e2fsprogs            # mkfs.ext4 and debugfs for the block-device rootfs tests (blockfile snapshotter scratch image)
	iproute2             # ip and tc, for the pod-network tests
	containernetworking-plugins # CNI bridge/host-local/loopback in /usr/lib/cni for the CRI e2e suite
	containerd           # the e2e suite and the demo drive a real containerd (1.6 here)
	runc                 # runc comparison in the benchmarks
	prometheus           # the CRI suite scrapes `hull monitor` with a real Prometheus server
	docker.io            # Docker 20.10 (dockerd, docker) for the hull-runtime e2e suite; /usr/bin/docker, not a static build elsewhere on PATH
	podman               # Podman 4.3 (with conmon) for the hull-runtime e2e suite
	catatonit            # the pause binary of Podman's pod infra containers (podman pod create)
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
# The hull kernel (`make kernel`, hack/build-kernel.sh; `make test` and
# `make bench` need it) is built from the distribution's kernel source: the
# linux-source metapackage (Debian and Ubuntu both have one; it pulls in the
# current linux-source-<version>). It is tested with Debian 12's 6.1.
kernel_packages=(linux-source build-essential bc bison flex libelf-dev libssl-dev dwarves xz-utils bzip2)
# has_candidate PKG: apt knows an installable version of PKG.
has_candidate() {
	local policy
	policy=$(apt-cache policy "$1" 2>/dev/null) || return 1
	[[ $policy =~ Candidate:\ [^\(] ]]
}
updated=
if ! has_candidate linux-source && [[ $(id -u) -eq 0 ]]; then
	# Most likely no package lists yet (a fresh container): fetch them once.
	apt-get update -qq
	updated=1
fi
if has_candidate linux-source; then
	packages+=("${kernel_packages[@]}")
else
	echo "install-deps: apt has no linux-source package here: the hull kernel cannot be built (make kernel, and so make test and make bench, will fail)" >&2
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
	[[ -n $updated ]] || apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
	echo "install-deps: Go is not installed (need Go >= $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod"))" >&2
	exit 1
fi

# The generators are pinned in the Makefile and installed under _output/tools.
make -s -C "$(dirname "$0")/.." tools

# nerdctl is no Debian package: built from the Go module proxy into
# /var/cache/hull, keyed by version (hack/build-nerdctl.sh).
"$(dirname "$0")/build-nerdctl.sh"
