#!/usr/bin/env bash
# Run a container with hull through containerd:
#   ctr run --rm --runtime io.containerd.hull.v2 <busybox> <id> echo hello
# It starts an isolated containerd under a temporary directory (its own root,
# state and socket; a containerd already running is left alone) with the
# shim on its PATH, imports a busybox image built locally (`hull image
# busybox`), runs the container, and removes everything at the end.
#
# Environment: HULL_BIN_DIR holds hull and containerd-shim-hull-v2 (default:
# the ones on PATH, else ./bin); HULL_CONFIG a hull configuration for the
# shim (default: the installed one); CONTAINERD/CTR the binaries (default:
# from PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

CONTAINERD=${CONTAINERD:-containerd}
CTR=${CTR:-ctr}
IMAGE=docker.io/hull/busybox:latest
ID=hull-demo-$$
work=$(mktemp -d /tmp/hull-demo.XXXXXX)
pid=
address=$work/containerd.sock

cleanup() {
	local rc=$?
	if [[ -n $pid ]]; then
		"$CTR" -a "$address" task kill -s KILL "$ID" >/dev/null 2>&1 || true
		"$CTR" -a "$address" task delete -f "$ID" >/dev/null 2>&1 || true
		"$CTR" -a "$address" container delete "$ID" >/dev/null 2>&1 || true
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		umount -R "$work/root" 2>/dev/null || true
	fi
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT

for tool in "$CONTAINERD" "$CTR"; do
	command -v "$tool" >/dev/null || { echo "demo: $tool not found (apt-get install containerd)" >&2; exit 1; }
done
shim_dir=${HULL_BIN_DIR:-}
if [[ -z $shim_dir ]]; then
	if command -v containerd-shim-hull-v2 >/dev/null; then
		shim_dir=$(dirname "$(command -v containerd-shim-hull-v2)")
	else
		shim_dir=$PWD/bin
	fi
fi
for bin in containerd-shim-hull-v2 hull; do
	[[ -x $shim_dir/$bin ]] || { echo "demo: no $bin in $shim_dir (make install, or make build)" >&2; exit 1; }
done

{
	cat >"$work/config.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$address"
[ttrpc]
  address = "$address.ttrpc"
TOML
	echo "demo: starting an isolated containerd in $work" >&2
	PATH="$shim_dir:$PATH" HULL_CONFIG=${HULL_CONFIG:-} \
		"$CONTAINERD" --config "$work/config.toml" --log-level warn >"$work/containerd.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		"$CTR" -a "$address" version >/dev/null 2>&1 && break
		kill -0 "$pid" 2>/dev/null || { cat "$work/containerd.log" >&2; exit 1; }
		sleep 0.1
	done
}

echo "demo: building and importing $IMAGE" >&2
"$shim_dir/hull" image busybox --name "$IMAGE" --output "$work/busybox.tar" >/dev/null
"$CTR" -a "$address" images import "$work/busybox.tar" >/dev/null

echo "+ ctr run --rm --runtime io.containerd.hull.v2 $IMAGE $ID echo hello" >&2
"$CTR" -a "$address" run --rm --runtime io.containerd.hull.v2 "$IMAGE" "$ID" echo hello
