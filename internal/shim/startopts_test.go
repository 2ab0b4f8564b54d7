package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/namespaces"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// startInput reads a file of testdata/startopts: `start`'s standard input
// as containerd writes it, made with containerd's own types (instance
// "pod1", namespace "k8s.io", options naming /etc/hull/pod.toml):
//
//   - legacy-options.bin: the options as containerd 1.6 writes them, a
//     gogo types.Any marshaled by gogo's proto.Marshal;
//   - bootstrap-options.bin: containerd 2.4's BootstrapParams
//     (api/runtime/bootstrap/v1 of containerd/api v1.12.0, every field
//     set) with the options added by its AddExtension;
//   - bootstrap-none.bin: the same without options.
func startInput(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "startopts", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStartOptions(t *testing.T) {
	t.Setenv(ConfigEnv, "/from/env.toml")
	const podConfig = "/etc/hull/pod.toml"
	for _, tc := range []struct {
		name      string
		input     []byte
		id        string
		want      string // configPath of the options
		wantErr   bool   // from startOptions
		wantNoCfg bool   // configPath refuses the options
	}{
		{name: "nothing (no options)", input: nil, id: "pod1", want: "/from/env.toml"},
		{name: "containerd 1.6: bare options", input: startInput(t, "legacy-options.bin"), id: "pod1", want: podConfig},
		{name: "containerd 2.4: bootstrap with options", input: startInput(t, "bootstrap-options.bin"), id: "pod1", want: podConfig},
		{name: "containerd 2.4: bootstrap without options", input: startInput(t, "bootstrap-none.bin"), id: "pod1", want: "/from/env.toml"},
		// Not this instance's: read as an Any, whose type is not hull's.
		{name: "bootstrap of another instance", input: startInput(t, "bootstrap-options.bin"), id: "pod2", wantNoCfg: true},
		{name: "not protobuf", input: []byte{0xff, 0xff, 0xff}, id: "pod1", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts, err := readStartOptions(bytes.NewReader(tc.input), tc.id, "k8s.io")
			if (err != nil) != tc.wantErr {
				t.Fatalf("startOptions: %v, want error %t", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			got, err := configPath(opts)
			if tc.wantNoCfg {
				if err == nil {
					t.Fatalf("configPath = %q, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("configPath = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	t.Run("too long", func(t *testing.T) {
		if _, err := readStartOptions(bytes.NewReader(make([]byte, maxStartInput+1)), "pod1", "k8s.io"); err == nil {
			t.Fatal("no error for input past the limit")
		}
	})
	t.Run("bootstrap: hull's options among other extensions", func(t *testing.T) {
		other, err := anypb.New(&runtimeoptions.Options{})
		if err != nil {
			t.Fatal(err)
		}
		other.TypeUrl = "containerd.io/cri.v1.Unknown"
		ours, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: podConfig})
		if err != nil {
			t.Fatal(err)
		}
		in := bootstrapWith(t, "pod1", "k8s.io", other, ours)
		opts, err := startOptions(in, "pod1", "k8s.io")
		if err != nil {
			t.Fatal(err)
		}
		if got, err := configPath(opts); err != nil || got != podConfig {
			t.Fatalf("configPath = %q, %v; want %q", got, err, podConfig)
		}
	})
}

// bootstrapWith encodes a BootstrapParams of id and namespace with exts as
// its extensions, with the fields numbers of the golden files (which
// TestStartOptions checks against containerd's own encoding).
func bootstrapWith(t *testing.T, id, namespace string, exts ...*anypb.Any) []byte {
	t.Helper()
	b := appendBytesField(nil, 1, []byte(id))
	b = appendBytesField(b, 2, []byte(namespace))
	for _, e := range exts {
		v, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b = appendBytesField(b, 8, appendBytesField(nil, 1, v))
	}
	return b
}

func appendBytesField(b []byte, num int, v []byte) []byte {
	b = append(b, byte(num<<3|2))
	for n := len(v); ; n >>= 7 {
		if n < 0x80 {
			b = append(b, byte(n))
			break
		}
		b = append(b, byte(n&0x7f|0x80))
	}
	return append(b, v...)
}

// TestClaimWarmByRuntimeOptions checks that `start` claims a warm VM by
// the pod's own configuration, the one its runtime options name, before
// $HULL_CONFIG's: a pod whose configuration has no factory asks none,
// whatever factory runs; a pod whose configuration has one asks it.
func TestClaimWarmByRuntimeOptions(t *testing.T) {
	dir := t.TempDir()
	factorySocket := filepath.Join(dir, "factory.sock")
	write := func(name string, vmCache int) string {
		t.Helper()
		p := filepath.Join(dir, name)
		body := fmt.Sprintf("[factory]\nvm_cache = %d\nsocket = %q\nclaim_timeout = \"300ms\"\n", vmCache, factorySocket)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	withFactory, withoutFactory := write("factory.toml", 1), write("cold.toml", 0)
	var claims atomic.Int32
	// An empty pool: every claim is a miss, counted.
	stop := serveFakeFactory(t, factorySocket, fakeFactory{err: errdefs.ErrNotFound, claims: &claims})
	defer stop()
	listener, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = listener.Close() }()
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	opts := shim.StartOpts{Address: "/run/containerd/containerd.sock"}
	optionsNaming := func(path string) *anypb.Any {
		a, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		name       string
		env        string
		options    *anypb.Any
		wantClaims int32
	}{
		{"options name a configuration without a factory", withFactory, optionsNaming(withoutFactory), 0},
		{"options name a configuration with a factory", withoutFactory, optionsNaming(withFactory), 1},
		{"options without a path: $HULL_CONFIG's factory", withFactory, optionsNaming(""), 1},
		{"no options: $HULL_CONFIG's factory", withFactory, nil, 1},
		{"no options: $HULL_CONFIG without a factory", withoutFactory, nil, 0},
		{"options of a foreign type claim nothing", withFactory, &anypb.Any{TypeUrl: "runc.v1.Options"}, 0},
		{"options naming a missing file claim nothing", withFactory, optionsNaming(filepath.Join(dir, "none.toml")), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(ConfigEnv, tc.env)
			before := claims.Load()
			if pid, ok := claimWarm(ctx, "c1", dir, opts, tc.options, nil, listener); ok {
				t.Fatalf("claim succeeded (pid %d) from an empty pool", pid)
			}
			if got := claims.Load() - before; got != tc.wantClaims {
				t.Fatalf("the factory was asked %d times, want %d", got, tc.wantClaims)
			}
		})
	}
}
