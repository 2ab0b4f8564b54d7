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

// WriteInfo answers `shim -info`: it reads the runtime options containerd
// sends on stdin (an Any; empty for none), checks they are hull's, and writes
// the runtime's RuntimeInfo protobuf. hull declares no mount capabilities
// and no OCI features document yet.
func WriteInfo(stdin io.Reader, stdout io.Writer) error {
	b, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	if err != nil {
		return fmt.Errorf("reading runtime options: %w", err)
	}
	info := &apitypes.RuntimeInfo{
		Name:    RuntimeName,
		Version: &apitypes.RuntimeVersion{Version: version.Version, Revision: version.Commit},
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
