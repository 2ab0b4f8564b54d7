package sandbox

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/startcount"
)

// TestStartCounted checks that a start that fails is counted in the node's
// start counts, and that no sandbox can take the counts file's name.
func TestStartCounted(t *testing.T) {
	tests := []struct {
		name string
		id   string
	}{
		{"bad config", "sb"},
		{"the counts file's name", startcount.Name},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			cfg := Config{
				ID: tc.id, StateRoot: root, Transport: hypervisor.TransportSerial,
				NewVM: func(hypervisor.Config) (hypervisor.VM, error) { return nil, errdefs.ErrNotImplemented },
				// No call timeout: validate refuses the config.
				DialTimeout: time.Second,
			}
			if tc.id == startcount.Name {
				cfg.CallTimeout = time.Second
			}
			if _, err := Start(context.Background(), cfg); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("start: %v, want an invalid-argument error", err)
			}
			got, err := startcount.Read(startcount.Path(root))
			if err != nil {
				t.Fatal(err)
			}
			if want := (startcount.Counts{SandboxError: 1}); got != want {
				t.Fatalf("counts %+v, want %+v", got, want)
			}
		})
	}
}
