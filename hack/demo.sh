#!/usr/bin/env bash
# Run a container with hull through containerd:
#   ctr run --rm --runtime io.containerd.hull.v2 <busybox> <id> echo hello
# When no containerd runs, an isolated one is started under a temporary
# directory (its own root, state and socket) and stopped at the end. The
# busybox image is built locally (internal/ociimage) and imported.
#
# Environment: HULL_BIN_DIR holds containerd-shim-hull-v2 (default: the one on
# PATH, else ./bin); HULL_CONFIG a hull configuration for the shim (default:
# the installed one); CONTAINERD/CTR the binaries (default: from PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

CONTAINERD=${CONTAINERD:-containerd}
CTR=${CTR:-ctr}
IMAGE=docker.io/hull/busybox:latest
ID=hull-demo-$$
work=$(mktemp -d /tmp/hull-demo.XXXXXX)
pid=
address=/run/containerd/containerd.sock

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
[[ -x $shim_dir/containerd-shim-hull-v2 ]] || { echo "demo: no containerd-shim-hull-v2 in $shim_dir (make install, or make build)" >&2; exit 1; }

if ! "$CTR" -a "$address" version >/dev/null 2>&1; then
	address=$work/containerd.sock
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
fi

echo "demo: building and importing $IMAGE" >&2
HULL_OCI_EXPORT=$work/busybox.tar HULL_OCI_NAME=$IMAGE go test -count=1 -run '^TestExportBusybox$' ./internal/ociimage >/dev/null
"$CTR" -a "$address" images import "$work/busybox.tar" >/dev/null

echo "+ ctr run --rm --runtime io.containerd.hull.v2 $IMAGE $ID echo hello" >&2
"$CTR" -a "$address" run --rm --runtime io.containerd.hull.v2 "$IMAGE" "$ID" echo hello
