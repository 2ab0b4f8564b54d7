package shim

import (
	"testing"

	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestSandboxID(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        string
	}{
		{"pod of one", nil, "c1"},
		{"cri", map[string]string{"io.kubernetes.cri.sandbox-id": "pod"}, "pod"},
		{"cri-o", map[string]string{"io.kubernetes.cri-o.SandboxID": "pod2"}, "pod2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sandboxID("c1", tc.annotations); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestConfigPath(t *testing.T) {
	t.Setenv(ConfigEnv, "/from/env.toml")
	opts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: "/from/options.toml"})
	if err != nil {
		t.Fatal(err)
	}
	empty, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := anypb.New(durationpb.New(0))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		opts    *anypb.Any
		want    string
		wantErr bool
	}{
		{"options", opts, "/from/options.toml", false},
		{"empty options", empty, "/from/env.toml", false},
		{"none", nil, "/from/env.toml", false},
		{"foreign type", other, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := configPath(tc.opts)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("got %q, %v; want %q, error %t", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestOutputURI(t *testing.T) {
	for _, tc := range []struct {
		in, scheme, path string
		wantErr          bool
	}{
		{"/run/containerd/fifo/x-stdout", "", "/run/containerd/fifo/x-stdout", false},
		{"fifo:///a/b", "", "fifo:///a/b", false},
		{"binary:///usr/bin/logger?x=1", "binary", "/usr/bin/logger", false},
		{"file:///var/log/c.log", "file", "/var/log/c.log", false},
		{"http://example/x", "", "", true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			u, err := outputURI(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %v, want an error", u)
				}
				return
			}
			if err != nil || u.Scheme != tc.scheme || u.Path != tc.path {
				t.Fatalf("got %v, %v; want scheme %q path %q", u, err, tc.scheme, tc.path)
			}
		})
	}
}

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, ok, err := readRecord(dir); ok || err != nil {
		t.Fatalf("empty bundle: got %t, %v", ok, err)
	}
	want := record{SandboxID: "pod", StateRoot: "/run/hull"}
	if err := writeRecord(dir, want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := readRecord(dir)
	if !ok || err != nil || got != want {
		t.Fatalf("got %+v %t %v, want %+v", got, ok, err, want)
	}
}

func TestVMID(t *testing.T) {
	if got := vmID("k8s.io", "abc"); got != "abc@k8s.io" {
		t.Errorf("vmID = %q", got)
	}
	if vmID("a", "b") == vmID("b", "a") || vmID("default", "x") == vmID("other", "x") {
		t.Error("two namespaces share a VM ID")
	}
	if got := (record{SandboxID: "pod", VMID: "pod@ns"}).hostID(); got != "pod@ns" {
		t.Errorf("hostID = %q", got)
	}
	// A record written before VM IDs were namespaced names the sandbox by
	// the pod's ID alone.
	if got := (record{SandboxID: "pod"}).hostID(); got != "pod" {
		t.Errorf("hostID of an old record = %q", got)
	}
}
