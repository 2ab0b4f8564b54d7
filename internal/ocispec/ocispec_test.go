package ocispec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestReadSpec(t *testing.T) {
	for _, tc := range []struct {
		name, body, wantErr string
	}{
		{"valid", `{"ociVersion":"1.0.2","process":{"args":["sh"]}}`, ""},
		{"syntax", "{\n  \"process\": {,}\n}", "config.json:2:16: malformed JSON"},
		{"type", `{"process": 3}`, "config.json:1:14"},
		{"truncated", `{"process": {`, "unexpected end of file"},
		{"trailing", `{} {}`, "data after the top-level object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := ReadSpec(dir)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("got %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errdefs.IsInvalidArgument(err)):
				t.Fatalf("got %v, want an invalid-argument error containing %q", err, tc.wantErr)
			}
		})
	}
}
