// Package atomicfile writes small files that a reader finds whole or not at
// all, and that a host crash leaves either as they were or whole: the
// records in which the shim, the sandbox and the OCI runtime keep what they
// created, and pid files.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write writes data to the file at path, mode 0600: into a temporary file
// beside it, synced, then renamed over path, and path's directory synced.
// A failure before the rename leaves the file at path as it was, and the
// temporary file gone; a failure of the directory's sync comes after the
// rename, so path then holds data, not yet durable.
func Write(path string, data []byte) (retErr error) {
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
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
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
