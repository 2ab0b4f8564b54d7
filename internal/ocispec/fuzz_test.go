package ocispec

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// FuzzReadSpec reads config.json files as an untrusted pod's author may
// shape them: ReadSpec returns a spec or an InvalidArgument error that
// names the file, and never panics.
func FuzzReadSpec(f *testing.F) {
	f.Fuzz(func(t *testing.T, config []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "config.json"), config, 0o600); err != nil {
			t.Fatal(err)
		}
		spec, err := ReadSpec(dir)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			if !strings.Contains(err.Error(), filepath.Join(dir, "config.json")) {
				t.Fatalf("error %v does not name the file", err)
			}
			return
		}
		if spec == nil {
			t.Fatal("no spec and no error")
		}
	})
}
