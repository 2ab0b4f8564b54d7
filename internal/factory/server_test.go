package factory

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/config"
)

// TestServeRefusesASharedSocketDir checks that the factory does not take
// over a socket directory others use (factory.socket = /tmp/factory.sock,
// /run/factory.sock): it must refuse it, not chmod it to 0700 and sweep
// warm-*.sock in it.
func TestServeRefusesASharedSocketDir(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, dir string)
	}{
		{"world writable", func(t *testing.T, dir string) {
			if err := os.Mkdir(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, os.ModeSticky|0o777); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink", func(t *testing.T, dir string) {
			target := filepath.Join(filepath.Dir(dir), "elsewhere")
			if err := os.Mkdir(target, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, dir); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "shared")
			tc.make(t, dir)
			before, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			c := config.Defaults()
			c.Factory.VMCache = 1
			c.Factory.Socket = filepath.Join(dir, "factory.sock")
			c.Runtime.StateDir = filepath.Join(root, "state")
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err = Serve(ctx, Options{Config: c, ShimBinary: "/bin/false", BootTimeout: time.Second})
			if err == nil {
				t.Error("Serve took a shared socket directory")
			}
			after, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if after.Mode() != before.Mode() {
				t.Errorf("socket directory mode changed from %v to %v", before.Mode(), after.Mode())
			}
			if _, err := os.Lstat(c.Factory.Socket); err == nil {
				t.Error("factory socket made in a shared directory")
			}
		})
	}
}

func TestSocketDirAcceptsItsOwn(t *testing.T) {
	root := t.TempDir()
	made := filepath.Join(root, "made")
	if err := socketDir(made); err != nil {
		t.Fatalf("a directory it makes: %v", err)
	}
	if st, err := os.Stat(made); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("made %v (%v), want mode 0700", st, err)
	}
	// Once made, a factory starting again takes it as it is.
	if err := socketDir(made); err != nil {
		t.Fatalf("an existing private directory: %v", err)
	}
}
