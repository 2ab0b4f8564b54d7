#!/usr/bin/env bash
# Builds nerdctl, which Debian does not package, from the Go module proxy
# into /var/cache/hull/nerdctl-<version>/nerdctl (HULL_NERDCTL_DIR names
# another directory), once per version: the nerdctl suite
# (integration/containerd, TestNerdctl) runs it.
#
# Not `go install ...@version`: nerdctl's go.mod replaces a test-only module
# of its own repository (mod/tigron) by a directory, which `go install`
# refuses and which the module zip leaves out; the command itself does not
# import it, so a build from a copy of the module works. v2.0.5 is the newest
# release whose dependencies the proxy serves in full (v2.1 and later need
# that directory, v2.4 a moby/moby/v2 pre-release it does not serve).
set -euo pipefail
version=${NERDCTL_VERSION:-v2.0.5}
dir=${HULL_NERDCTL_DIR:-/var/cache/hull/nerdctl-$version}
if [[ -x $dir/nerdctl ]]; then
	exit 0
fi
src=$(GOFLAGS= go mod download -json "github.com/containerd/nerdctl/v2@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [[ -z $src ]]; then
	echo "build-nerdctl: the Go module proxy gave no source for nerdctl $version" >&2
	exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src" "$tmp/src"
chmod -R u+w "$tmp/src"
echo "build-nerdctl: building nerdctl $version into $dir"
(cd "$tmp/src" && CGO_ENABLED=0 GOFLAGS= go build -o "$tmp/nerdctl" ./cmd/nerdctl)
mkdir -p "$dir"
mv "$tmp/nerdctl" "$dir/nerdctl"
