package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestStateDir(t *testing.T) {
	const root = "/var/run/containerd/io.containerd.runtime.v2.hull"
	podID := strings.Repeat("0123456789abcdef", 4) // a CRI pod ID: 64 hex digits
	other := strings.Repeat("0123456789abcdef", 3) + strings.Repeat("f", 16)

	if got := StateDir(root, "boot-1"); got != filepath.Join(root, "boot-1") {
		t.Errorf("short id: %s", got)
	}
	short := strings.Repeat("x", maxPlainDirName)
	if got := StateDir(root, short); got != filepath.Join(root, short) {
		t.Errorf("id of %d bytes: %s", maxPlainDirName, got)
	}
	long := StateDir(root, podID)
	if filepath.Dir(long) != root || !strings.HasPrefix(filepath.Base(long), "h-") {
		t.Fatalf("long id: %s", long)
	}
	if len(filepath.Base(long)) != maxPlainDirName+1 {
		t.Errorf("hashed name %q: %d bytes, want %d (never a plain id's length)", filepath.Base(long), len(filepath.Base(long)), maxPlainDirName+1)
	}
	if StateDir(root, podID) != long {
		t.Error("not deterministic")
	}
	if StateDir(root, other) == long {
		t.Error("two ids share a state directory")
	}
	// The longest socket in the directory fits sun_path with this 50-byte
	// root, which the plain 64-character pod ID would not.
	if sock := filepath.Join(long, "virtiofs.sock"); len(sock) > 107 {
		t.Errorf("socket path %s: %d bytes", sock, len(sock))
	}
	if plain := filepath.Join(root, podID, "virtiofs.sock"); len(plain) <= 107 {
		t.Fatalf("test root too short to show the point: %d bytes", len(plain))
	}
}

func TestCleanupAll(t *testing.T) {
	root := t.TempDir()
	long := strings.Repeat("ab", 32)
	for _, id := range []string{"short", long} {
		dir := StateDir(root, id)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := writeRecord(dir, record{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	keep := filepath.Join(root, "not-a-sandbox")
	if err := os.WriteFile(keep, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CleanupAll(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "not-a-sandbox" {
		t.Errorf("left in the state root: %v", ents)
	}
	if err := CleanupAll(context.Background(), "relative"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative root: %v", err)
	}
	if err := CleanupAll(context.Background(), filepath.Join(root, "missing")); err != nil {
		t.Errorf("missing root: %v", err)
	}
}
