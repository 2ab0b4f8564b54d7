package guestimage

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// compareGolden compares got with the golden file, or rewrites it with
// -update. With optional set, a missing golden file is only logged.
func compareGolden(t *testing.T, path string, got []byte, optional bool) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && optional {
		t.Logf("no golden file %s; run with -update to create it", path)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run with -update to accept):\n%s", path, got)
	}
}
