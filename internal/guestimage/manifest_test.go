package guestimage

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/modlist"
)

// writeImage writes a kernel, an initrd and their manifest into dir.
func writeImage(t *testing.T, dir string) *Manifest {
	t.Helper()
	m := &Manifest{
		Builder:  BuilderInfo{Version: "v0.0.0-test", Commit: "abc"},
		Format:   FormatInitrd,
		Kernel:   KernelInfo{Package: "linux-image-x", PackageVersion: "1", Release: fakeRelease, File: "vmlinux-" + fakeRelease, Format: KernelFormatPVH},
		Initrd:   &InitrdInfo{File: "initrd-" + fakeRelease + ".img", Compression: CompressionZstd},
		Features: []string{modlist.FeatureBlock},
		Modules:  []modlist.Module{{Name: "virtio_blk", Path: "/lib/modules/x/virtio_blk.ko", Features: []string{modlist.FeatureBlock}}},
	}
	for _, f := range []struct {
		name string
		data string
		sha  *string
		size *int64
	}{
		{m.Kernel.File, "kernel", &m.Kernel.SHA256, &m.Kernel.Size},
		{m.Initrd.File, "initrd", &m.Initrd.SHA256, &m.Initrd.Size},
	} {
		sum, err := writeFileAtomic(filepath.Join(dir, f.name), 0o644, func(w io.Writer) error {
			_, err := io.WriteString(w, f.data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		*f.sha, *f.size = sum.sha256, sum.size
	}
	b, err := m.marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestManifestGolden(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, dir)
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	compareGolden(t, filepath.Join("testdata", "manifest.json"), b, false)
}

func TestManifestVerify(t *testing.T) {
	for _, tc := range []struct {
		name     string
		damage   func(t *testing.T, dir string, m *Manifest)
		wantErr  error
		wantName string // the file the error must name
	}{
		{"intact", func(*testing.T, string, *Manifest) {}, nil, ""},
		{"kernel missing", func(t *testing.T, dir string, m *Manifest) {
			if err := os.Remove(filepath.Join(dir, m.Kernel.File)); err != nil {
				t.Fatal(err)
			}
		}, errdefs.ErrNotFound, "vmlinux-"},
		{"initrd changed", func(t *testing.T, dir string, m *Manifest) {
			if err := os.WriteFile(filepath.Join(dir, m.Initrd.File), []byte("initrD"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, errdefs.ErrDataLoss, "initrd-"},
		{"initrd grew", func(t *testing.T, dir string, m *Manifest) {
			if err := os.WriteFile(filepath.Join(dir, m.Initrd.File), []byte("initrd+"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, errdefs.ErrDataLoss, "initrd-"},
		{"path escapes", func(t *testing.T, dir string, m *Manifest) {
			m.Kernel.File = "../vmlinux"
		}, errdefs.ErrDataLoss, "../vmlinux"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeImage(t, dir)
			m, err := ReadManifest(dir)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(t, dir, m)
			err = m.Verify(dir)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantName) {
				t.Fatalf("error %v, want %v naming %s", err, tc.wantErr, tc.wantName)
			}
		})
	}
}

func TestReadManifestErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadManifest(dir); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("empty dir: %v, want not found", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), []byte(`{"kernel": {"flavour": 1}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(dir); !errors.Is(err, errdefs.ErrDataLoss) {
		t.Errorf("unknown field: %v, want data loss", err)
	}
}
