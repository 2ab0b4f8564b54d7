package shim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/runtime/v2/shim"

	"github.com/hull-runtime/hull/internal/sandbox"
)

func TestWarmSandboxHandedOnce(t *testing.T) {
	if sb := takeWarmSandbox(); sb != nil {
		t.Fatalf("a warm sandbox before any was given: %v", sb)
	}
	sb := &sandbox.Sandbox{}
	WithWarmSandbox(sb)
	if got := takeWarmSandbox(); got != sb {
		t.Fatalf("took %p, want %p", got, sb)
	}
	if got := takeWarmSandbox(); got != nil {
		t.Fatalf("the warm sandbox was handed out twice")
	}
}

// TestDeleteCleansUpTheWarmSandbox checks that `shim delete`, after a
// shim died while adopting its warm sandbox and before the sandbox took the
// pod's name, removes the warm sandbox by the ID its bundle record keeps.
func TestDeleteCleansUpTheWarmSandbox(t *testing.T) {
	root, bundle := t.TempDir(), t.TempDir()
	warmDir := sandbox.StateDir(root, "warm-0123456789abcdef")
	if err := os.Mkdir(warmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(warmDir, "sandbox.json"), []byte(`{"id":"warm-0123456789abcdef"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := `{"sandbox_id":"pod","vm_id":"pod@default","state_root":"` + root + `","warm_id":"warm-0123456789abcdef"}`
	if err := os.WriteFile(filepath.Join(bundle, recordName), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.WithValue(t.Context(), shim.OptsKey{}, shim.Opts{BundlePath: bundle})
	if _, err := (Manager{}).Stop(ctx, "pod"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(warmDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the warm sandbox's state directory is left: %v", err)
	}
}
