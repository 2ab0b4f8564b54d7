package shim

import (
	"fmt"
	"io"
	"slices"

	apitypes "github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hull-runtime/hull/internal/version"
)

// InfoRequested reports whether the shim was run as `shim -info`:
// containerd 2.x asks a runtime that way what it is before creating tasks.
// containerd 1.7's shim library, which serves everything else, does not
// know the flag.
func InfoRequested(args []string) bool {
	return slices.Contains(args, "-info") || slices.Contains(args, "--info")
}

// allowMountsAnnotation is the RuntimeInfo annotation through which a shim
// tells containerd 2.x's mount manager which mount types and transforms
// ("<transform>/*") it carries out itself (containerd reads it from shims
// that attach no MountCapabilities to their start reply, which containerd
// 1.7's shim library cannot).
const allowMountsAnnotation = "containerd.io/runtime-allow-mounts"

// allowedMounts are the mounts hull takes as containerd's snapshotter gives
// them: erofs layers and the "format/" and "mkdir/" overlay of containerd's
// erofs snapshotter, which the guest mounts from hot-added disks
// (storage.ErofsRootfsOf). Without the claim the mount manager would mount
// each layer on the host through a loop device. "mkfs/" is not claimed:
// containerd formats the writable layer's new image file itself.
const allowedMounts = "erofs,format/*,mkdir/*"

// WriteInfo answers `shim -info`: it reads the runtime options containerd
// sends on stdin (an Any; empty for none), checks they are hull's, and writes
// the runtime's RuntimeInfo protobuf, with the mounts hull carries out
// itself (allowedMounts) and no OCI features document yet.
func WriteInfo(stdin io.Reader, stdout io.Writer) error {
	b, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	if err != nil {
		return fmt.Errorf("reading runtime options: %w", err)
	}
	info := &apitypes.RuntimeInfo{
		Name:        RuntimeName,
		Version:     &apitypes.RuntimeVersion{Version: version.Version, Revision: version.Commit},
		Annotations: map[string]string{allowMountsAnnotation: allowedMounts},
	}
	if len(b) > 0 {
		opts := &anypb.Any{}
		if err := proto.Unmarshal(b, opts); err != nil {
			return fmt.Errorf("decoding runtime options: %w", err)
		}
		if _, err := configPath(opts); err != nil {
			return err
		}
		info.Options = opts
	}
	out, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
