package startcount

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestAddRead(t *testing.T) {
	tests := []struct {
		name   string
		events map[Event]int
		want   Counts
	}{
		{"none", nil, Counts{}},
		{"each", map[Event]int{SandboxStarted: 3, SandboxFailed: 2, ContainerStarted: 5, ContainerFailed: 1},
			Counts{SandboxOK: 3, SandboxError: 2, ContainerOK: 5, ContainerError: 1}},
		{"sandbox failures only", map[Event]int{SandboxFailed: 40}, Counts{SandboxError: 40}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := Path(t.TempDir())
			// Concurrent adders, each with its own open file as separate
			// shims have: none may lose a count.
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for e, n := range tt.events {
				for range n {
					wg.Go(func() { errs <- Add(path, e) })
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			got, err := Read(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("counts %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestEvents(t *testing.T) {
	tests := []struct {
		name string
		got  Event
		want Event
	}{
		{"sandbox ok", SandboxEvent(nil), SandboxStarted},
		{"sandbox error", SandboxEvent(os.ErrClosed), SandboxFailed},
		{"container ok", ContainerEvent(nil), ContainerStarted},
		{"container error", ContainerEvent(os.ErrClosed), ContainerFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("event %d, want %d", tt.got, tt.want)
			}
		})
	}
}

func TestBadFiles(t *testing.T) {
	t.Run("corrupt file counts from zero", func(t *testing.T) {
		path := Path(t.TempDir())
		if err := os.WriteFile(path, []byte(`{"sandbox_ok": 7, garbage garbage garbage garbage`), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(path); err == nil {
			t.Fatal("read a corrupt file without error")
		}
		if err := Add(path, SandboxFailed); err != nil {
			t.Fatal(err)
		}
		got, err := Read(path)
		if err != nil {
			t.Fatal(err)
		}
		if want := (Counts{SandboxError: 1}); got != want {
			t.Fatalf("counts %+v, want %+v", got, want)
		}
	})
	t.Run("symlink refused", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "elsewhere")
		if err := os.WriteFile(target, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, Path(dir)); err != nil {
			t.Fatal(err)
		}
		if err := Add(Path(dir), SandboxStarted); err == nil {
			t.Fatal("added through a symlink")
		}
		if _, err := Read(Path(dir)); err == nil {
			t.Fatal("read through a symlink")
		}
		if b, _ := os.ReadFile(target); len(b) != 0 {
			t.Fatalf("symlink target written: %q", b)
		}
	})
	t.Run("unknown event", func(t *testing.T) {
		if err := Add(Path(t.TempDir()), Event(99)); err == nil {
			t.Fatal("added an unknown event")
		}
	})
	t.Run("file is 0600", func(t *testing.T) {
		path := Path(t.TempDir())
		if err := Add(path, ContainerStarted); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
		}
	})
}
