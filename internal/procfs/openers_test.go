package procfs

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestOpeners(t *testing.T) {
	path := filepath.Join(t.TempDir(), "held")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := os.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Close() }()
	self := Opener{PID: os.Getpid(), FD: int(f.Fd())}
	got, err := Openers(path)
	if err != nil || !slices.Contains(got, self) {
		t.Fatalf("Openers = %v, %v; want %v among them", got, err, self)
	}
	if slices.Contains(got, Opener{PID: os.Getpid(), FD: int(g.Fd())}) {
		t.Errorf("Openers = %v lists the descriptor of another file", got)
	}
	_ = f.Close()
	if got, err := Openers(path); err != nil || slices.ContainsFunc(got, func(o Opener) bool { return o.PID == os.Getpid() }) {
		t.Errorf("after the close: Openers = %v, %v; want none of this process", got, err)
	}
	if _, err := Openers(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Openers of a missing file: %v, want a not-exist error", err)
	}
}
