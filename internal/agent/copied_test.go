package agent

import (
	"os"
	"path/filepath"
	"testing"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

func TestWriteCopied(t *testing.T) {
	dir := t.TempDir()
	files := []*api.CopiedFile{
		{Path: "1-hosts", Kind: api.CopiedFile_REGULAR, Mode: 0o644, Data: []byte("127.0.0.1 localhost\n")},
		{Path: "2-cm", Kind: api.CopiedFile_DIRECTORY, Mode: 0o755},
		{Path: "2-cm/..v1", Kind: api.CopiedFile_DIRECTORY, Mode: 0o755},
		{Path: "2-cm/..v1/key", Kind: api.CopiedFile_REGULAR, Mode: 0o600, Data: []byte("value"), Uid: 1000, Gid: 2000},
		{Path: "2-cm/..data", Kind: api.CopiedFile_SYMLINK, Link: "..v1"},
		{Path: "2-cm/key", Kind: api.CopiedFile_SYMLINK, Link: "..data/key"},
	}
	root, err := writeCopied(dir, "c1", files)
	if err != nil {
		t.Fatal(err)
	}
	if root != filepath.Join(dir, "c1") {
		t.Fatalf("root %q", root)
	}
	b, err := os.ReadFile(filepath.Join(root, "2-cm", "key"))
	if err != nil || string(b) != "value" {
		t.Fatalf("configmap key through its links: %q, %v", b, err)
	}
	st, err := os.Stat(filepath.Join(root, "2-cm", "..v1", "key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode())
	}
	if b, _ := os.ReadFile(filepath.Join(root, "1-hosts")); string(b) != "127.0.0.1 localhost\n" {
		t.Errorf("hosts %q", b)
	}

	for _, tc := range []struct {
		name  string
		files []*api.CopiedFile
	}{
		{"absolute", []*api.CopiedFile{{Path: "/etc/passwd", Data: []byte("x")}}},
		{"dot-dot", []*api.CopiedFile{{Path: "../escape", Data: []byte("x")}}},
		{"dot-dot inside", []*api.CopiedFile{{Path: "a/../../escape", Data: []byte("x")}}},
		{"unclean", []*api.CopiedFile{{Path: "a//b", Data: []byte("x")}}},
		{"set-uid bit", []*api.CopiedFile{{Path: "f", Mode: 0o4755, Data: []byte("x")}}},
		{"through a copied link", []*api.CopiedFile{
			{Path: "l", Kind: api.CopiedFile_SYMLINK, Link: dir},
			{Path: "l/escape", Data: []byte("x")},
		}},
		{"twice", []*api.CopiedFile{{Path: "f", Data: []byte("x")}, {Path: "f", Data: []byte("y")}}},
		{"parent missing", []*api.CopiedFile{{Path: "d/f", Data: []byte("x")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := writeCopied(dir, "bad", tc.files); err == nil {
				t.Fatal("written, want an error")
			}
			if _, err := os.Lstat(filepath.Join(dir, "bad")); !os.IsNotExist(err) {
				t.Errorf("left %s behind: %v", filepath.Join(dir, "bad"), err)
			}
			if _, err := os.Lstat(filepath.Join(dir, "escape")); !os.IsNotExist(err) {
				t.Errorf("wrote outside the container's directory: %v", err)
			}
		})
	}
}
