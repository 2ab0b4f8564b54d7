package shim

import (
	"bytes"
	"testing"

	apitypes "github.com/containerd/containerd/api/types"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
)

func TestInfoRequested(t *testing.T) {
	if !InfoRequested([]string{"/x/containerd-shim-hull-v2", "-info"}) {
		t.Error("-info not seen")
	}
	if InfoRequested([]string{"/x/containerd-shim-hull-v2", "-namespace", "info", "start"}) {
		t.Error("an argument named info taken for -info")
	}
}

func TestWriteInfo(t *testing.T) {
	opts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: "/etc/hull/x.toml"})
	if err != nil {
		t.Fatal(err)
	}
	in, err := proto.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	for name, stdin := range map[string][]byte{"no options": nil, "hull options": in} {
		var out bytes.Buffer
		if err := WriteInfo(bytes.NewReader(stdin), &out); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var info apitypes.RuntimeInfo
		if err := proto.Unmarshal(out.Bytes(), &info); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if info.GetName() != RuntimeName || info.GetVersion().GetVersion() == "" {
			t.Errorf("%s: info %+v", name, &info)
		}
		if got := info.GetAnnotations()["containerd.io/runtime-allow-mounts"]; got != "erofs,format/*,mkdir/*" {
			t.Errorf("%s: mounts claimed %q", name, got)
		}
		if (stdin != nil) != (info.GetOptions() != nil) {
			t.Errorf("%s: options %v", name, info.GetOptions())
		}
	}

	other, err := typeurl.MarshalAnyToProto(&emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := proto.Marshal(other)
	if err := WriteInfo(bytes.NewReader(b), &bytes.Buffer{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("foreign options: got %v, want an invalid argument", err)
	}
}

func TestDecodeAny(t *testing.T) {
	a, err := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"true"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := decodeAny[specs.Process](a, "the spec")
	if err != nil || len(p.Args) != 1 || p.Args[0] != "true" {
		t.Fatalf("decoded %+v, %v", p, err)
	}
	if _, err := decodeAny[specs.LinuxResources](a, "the resources"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a process as resources: %v, want an invalid argument", err)
	}
	if _, err := decodeAny[specs.Process](&anypb.Any{TypeUrl: "nonsense", Value: []byte{1}}, "the spec"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("an unknown type: %v, want an invalid argument", err)
	}
}
