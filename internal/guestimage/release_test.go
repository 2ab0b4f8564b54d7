package guestimage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidRelease(t *testing.T) {
	for _, rel := range []string{"6.1.0-56-cloud-amd64", "6.1.192-hull", "6.12.1+deb13-cloud-amd64", "5.15.0-91-generic", "6.1.0~rc1", "6"} {
		if err := validRelease(rel); err != nil {
			t.Errorf("%q: %v", rel, err)
		}
	}
	for _, rel := range []string{
		"", "hull", "-6.1", ".6.1", "6.1/../../x", "../6.1", "6.1..0", "6.1.0-hull/x", "6.1 0", "6.1\x00", "6.1%s",
		"6.1.0-" + strings.Repeat("x", 64),
	} {
		if err := validRelease(rel); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: error %v, want invalid argument", rel, err)
		}
	}
}

func TestOutputPath(t *testing.T) {
	if p, err := outputPath("/out", "vmlinux-6.1.0-hull"); err != nil || p != "/out/vmlinux-6.1.0-hull" {
		t.Errorf("plain name: %q, %v", p, err)
	}
	for _, name := range []string{"", ".", "..", "../x", "a/b", "/etc/passwd", "x/"} {
		if p, err := outputPath("/out", name); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: %q, %v; want invalid argument", name, p, err)
		}
	}
}

// TestFindReleaseRefuses: a package's release names files too.
func TestFindReleaseRefuses(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-6.1..x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "lib", "modules", "6.1..x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if rel, err := findRelease(dir); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("release %q, %v; want invalid argument", rel, err)
	}
}
