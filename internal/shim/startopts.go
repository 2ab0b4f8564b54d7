package shim

import (
	"errors"
	"fmt"
	"io"
	"os"

	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// maxStartInput bounds what `start` reads from its standard input.
const maxStartInput = 1 << 20

// The fields of containerd's BootstrapParams and Extension
// (api/runtime/bootstrap/v1) that `start` reads: the instance ID and
// namespace that tell the message apart from a bare Any, and the
// extensions, one of which holds the runtime options.
const (
	bootstrapInstanceID protowire.Number = 1
	bootstrapNamespace  protowire.Number = 2
	bootstrapExtension  protowire.Number = 8
	extensionValue      protowire.Number = 1
)

// stdinStartOptions is readStartOptions of the process's standard input,
// which containerd fills; a terminal (`start` run by hand) is not read.
func stdinStartOptions(id, namespace string) (*anypb.Any, error) {
	if _, err := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS); err == nil {
		return nil, nil
	}
	return readStartOptions(os.Stdin, id, namespace)
}

// readStartOptions reads `start`'s standard input (at most maxStartInput
// bytes) and decodes it with startOptions.
func readStartOptions(r io.Reader, id, namespace string) (*anypb.Any, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxStartInput+1))
	if err != nil {
		return nil, fmt.Errorf("reading the runtime options: %w", err)
	}
	if len(b) > maxStartInput {
		return nil, fmt.Errorf("runtime options longer than %d bytes", maxStartInput)
	}
	return startOptions(b, id, namespace)
}

// startOptions decodes what containerd writes on `start`'s standard input
// into the task's runtime options: the options the create request brings
// again later (the task's options, else the container's runtime options),
// or nil without any. containerd writes them in one of two forms:
//
//   - 1.6, 1.7 and 2.0 to 2.2: the options, a protobuf Any, bare (nothing
//     at all without options);
//   - 2.3 and later: a BootstrapParams whose extensions hold the options.
//
// Both begin with two length-delimited fields, so the input is a
// BootstrapParams when those are this instance's ID and namespace (as
// containerd's own shim library tells them apart): an Any's type URL and
// value are not (a namespace begins with a letter or digit, an encoded
// message of options with a field tag).
func startOptions(b []byte, id, namespace string) (*anypb.Any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if exts, ok := bootstrapExtensions(b, id, namespace); ok {
		return bootstrapOptions(exts)
	}
	opts := &anypb.Any{}
	if err := proto.Unmarshal(b, opts); err != nil {
		return nil, fmt.Errorf("decoding the runtime options: %w", err)
	}
	return opts, nil
}

// bootstrapExtensions returns the extensions of b, or false when b is not
// a well-formed BootstrapParams of this instance.
func bootstrapExtensions(b []byte, id, namespace string) ([][]byte, bool) {
	var gotID, gotNS string
	var exts [][]byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == bootstrapInstanceID || num == bootstrapNamespace || num == bootstrapExtension) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, false
			}
			switch num {
			case bootstrapInstanceID:
				gotID = string(v)
			case bootstrapNamespace:
				gotNS = string(v)
			default:
				exts = append(exts, v)
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
	}
	if gotID == "" || gotID != id || gotNS != namespace {
		return nil, false
	}
	return exts, true
}

// bootstrapOptions picks the runtime options among a BootstrapParams'
// extensions: the one of hull's type (runtimeoptions.v1.Options), else
// the first, whose type then fails as the create request's would; nil
// without extensions.
func bootstrapOptions(exts [][]byte) (*anypb.Any, error) {
	var first *anypb.Any
	for _, e := range exts {
		a, err := extensionAny(e)
		if err != nil {
			return nil, err
		}
		if a == nil {
			continue
		}
		if v, err := typeurl.UnmarshalAny(a); err == nil {
			if _, ok := v.(*runtimeoptions.Options); ok {
				return a, nil
			}
		}
		if first == nil {
			first = a
		}
	}
	return first, nil
}

// extensionAny decodes an Extension's value (nil when it has none).
func extensionAny(b []byte) (*anypb.Any, error) {
	var value []byte
	found := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, errors.New("decoding a bootstrap extension: bad tag")
		}
		b = b[n:]
		if num == extensionValue && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, errors.New("decoding a bootstrap extension: bad value")
			}
			value, found = v, true
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, errors.New("decoding a bootstrap extension: bad field")
		}
		b = b[n:]
	}
	if !found {
		return nil, nil
	}
	a := &anypb.Any{}
	if err := proto.Unmarshal(value, a); err != nil {
		return nil, fmt.Errorf("decoding a bootstrap extension: %w", err)
	}
	return a, nil
}
