#!/bin/sh
# Builds a minimal initrd for a hand-run agent test in QEMU: the static agent
# as /init, the modules that the serial transport needs on q35, their list in
# /etc/hull/modules.json, and /dev/console. The real image builder is
# internal/guestimage; this only serves TestAgentInQEMU.
#
# usage: mkinitrd.sh <kernel modules root> <out.cpio>
#   e.g. mkinitrd.sh /tmp/kpkg/root/lib/modules/6.1.0-56-cloud-amd64 /tmp/x/initrd.cpio
set -eu
mods=$1
out=$2
release=$(basename "$mods")
repo=$(cd "$(dirname "$0")/../../.." && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

(cd "$repo" && CGO_ENABLED=1 go build -tags netgo,osusergo -ldflags "-extldflags -static -s -w" -o "$root/init" ./cmd/hull-agent)
mkdir -p "$root/etc/hull" "$root/dev" "$root/proc" "$root/sys"
mknod -m 600 "$root/dev/console" c 5 1

# name:feature,... in load order (dependencies first, see modinfo -F depends).
list="virtio_ring:bus-pci,bus-mmio,serial,vsock
virtio:bus-pci,bus-mmio,serial,vsock
virtio_pci_legacy_dev:bus-pci
virtio_pci_modern_dev:bus-pci
virtio_pci:bus-pci
virtio_mmio:bus-mmio
virtio_console:serial
vsock:vsock
vmw_vsock_virtio_transport_common:vsock
vmw_vsock_virtio_transport:vsock"
json="{\"kernel_release\":\"$release\",\"modules\":["
sep=
for entry in $list; do
	name=${entry%%:*}
	feats=${entry#*:}
	src=$(find "$mods/kernel" -name "$name.ko*" | head -n1)
	[ -n "$src" ] || { echo "module $name not found under $mods" >&2; exit 1; }
	rel=${src#"$mods"/}
	mkdir -p "$root/lib/modules/$release/$(dirname "$rel")"
	cp "$src" "$root/lib/modules/$release/$rel"
	fjson=$(printf '%s' "$feats" | sed 's/\([^,]*\)/"\1"/g')
	json="$json$sep{\"name\":\"$name\",\"path\":\"/lib/modules/$release/$rel\",\"features\":[$fjson]}"
	sep=,
done
echo "$json]}" >"$root/etc/hull/modules.json"

(cd "$root" && find . | cpio -o -H newc --quiet) >"$out"
echo "$out: $(du -h "$out" | cut -f1)"
