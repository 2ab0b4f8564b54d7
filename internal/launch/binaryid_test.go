package launch

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestBinaryID checks that the QEMU program's identity in the template
// keys changes whenever another file takes its place, even one of the same
// size and modification time, and stays the same otherwise.
func TestBinaryID(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "qemu-system-x86_64")
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// write puts content at path with the fixed modification time, as a
	// reproducible build or `cp -p` would.
	write := func(t *testing.T, path, content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o755); err != nil { //nolint:gosec // an executable stand-in
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	write(t, bin, "version 1")
	first := binaryID(bin)

	t.Run("unchanged", func(t *testing.T) {
		if got := binaryID(bin); got != first {
			t.Fatalf("binaryID changed with the file unchanged: %q, then %q", first, got)
		}
	})
	t.Run("replaced by rename, same size and mtime", func(t *testing.T) {
		before := binaryID(bin)
		next := filepath.Join(dir, "new")
		write(t, next, "version 2")
		if err := os.Rename(next, bin); err != nil {
			t.Fatal(err)
		}
		if got := binaryID(bin); got == before {
			t.Fatalf("binaryID unchanged after the file was replaced: %q", got)
		}
	})
	t.Run("rewritten in place, same size and mtime", func(t *testing.T) {
		before := binaryID(bin)
		// The kernel's file times have the granularity of its coarse
		// clock (a scheduler tick): let one pass so that the rewrite's
		// change time differs.
		time.Sleep(50 * time.Millisecond)
		write(t, bin, "version 3")
		if got := binaryID(bin); got == before {
			t.Fatalf("binaryID unchanged after the file was rewritten: %q", got)
		}
	})
	t.Run("a link pointed at another file", func(t *testing.T) {
		a, b := filepath.Join(dir, "qemu-a"), filepath.Join(dir, "qemu-b")
		write(t, a, "version a")
		write(t, b, "version b")
		link := filepath.Join(dir, "qemu")
		if err := os.Symlink(a, link); err != nil {
			t.Fatal(err)
		}
		before := binaryID(link)
		if err := os.Remove(link); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(b, link); err != nil {
			t.Fatal(err)
		}
		if got := binaryID(link); got == before {
			t.Fatalf("binaryID unchanged after the link was pointed at another file: %q", got)
		}
	})
}
