// Package atomicfile writes small files that a reader finds whole or not at
// all, and that a host crash leaves either as they were or whole: the
// records in which the shim, the sandbox and the OCI runtime keep what they
// created, pid files, the guest's resolver configuration and the guest
// image's files.
//
// It imports nothing beyond the standard library's os, io and path/filepath,
// so that the guest agent may use it too.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Options say how WriteFunc writes a file. The zero value is what Write does.
type Options struct {
	// Perm is the file's mode, set whatever the umask; 0 means 0600.
	Perm os.FileMode
	// NoSync skips syncing the file and its directory: a reader still sees
	// the old file or the new one whole, but a crash may lose the new one.
	// For files that do not outlive a crash, such as the guest's.
	NoSync bool
}

// Write writes data to the file at path, mode 0600: into a temporary file
// beside it, synced, then renamed over path, and path's directory synced.
// A failure before the rename leaves the file at path as it was, and the
// temporary file gone; a failure of the directory's sync comes after the
// rename, so path then holds data, not yet durable.
func Write(path string, data []byte) error {
	return WriteFunc(path, Options{}, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFunc is Write for content that fill writes, with the mode and
// durability that o says. An error from fill leaves the file at path as it
// was, and the temporary file gone. path's directory must exist.
func WriteFunc(path string, o Options, fill func(io.Writer) error) (retErr error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*") // mode 0600
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := fill(f); err != nil {
		return err
	}
	if o.Perm != 0 {
		if err := f.Chmod(o.Perm); err != nil {
			return err
		}
	}
	if !o.NoSync {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if o.NoSync {
		return nil
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return err
	}
	return d.Close()
}
