package child

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRebase(t *testing.T) {
	tests := []struct{ p, want string }{
		{"/run/hull/warm-1", "/run/hull/pod"},
		{"/run/hull/warm-1/console.log", "/run/hull/pod/console.log"},
		{"/run/hull/warm-1/shared/x", "/run/hull/pod/shared/x"},
		{"/run/hull/warm-10/console.log", "/run/hull/warm-10/console.log"},
		{"/elsewhere/x", "/elsewhere/x"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := Rebase(tc.p, "/run/hull/warm-1", "/run/hull/pod"); got != tc.want {
			t.Errorf("Rebase(%q) = %q, want %q", tc.p, got, tc.want)
		}
	}
}

func TestMoveLogs(t *testing.T) {
	root := t.TempDir()
	old, dir := filepath.Join(root, "old"), filepath.Join(root, "new")
	if err := os.Mkdir(old, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLog(filepath.Join(old, "x.log"), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	outside, err := OpenLog(filepath.Join(root, "outside.log"), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = outside.Close() }()

	failed := errors.New("rename failed")
	if err := MoveLogs(old, dir, func() error { return failed }, l, nil); !errors.Is(err, failed) {
		t.Fatalf("got %v", err)
	}
	if l.Path() != filepath.Join(old, "x.log") {
		t.Fatalf("a failed move changed the path to %s", l.Path())
	}
	if err := MoveLogs(old, dir, func() error { return os.Rename(old, dir) }, l, outside, nil); err != nil {
		t.Fatal(err)
	}
	if l.Path() != filepath.Join(dir, "x.log") || outside.Path() != filepath.Join(root, "outside.log") {
		t.Fatalf("paths %s, %s", l.Path(), outside.Path())
	}
	// Writes past the bound rotate in the new directory.
	_, _ = l.Write([]byte("0123456789abcdef"))
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(RotatedPath(filepath.Join(dir, "x.log"))); err != nil {
		t.Fatal(err)
	}
}
