package e2e

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestBlockfileSnapshotter(t *testing.T) {
	conf := BlockfileSnapshotter(t)
	m := regexp.MustCompile(`(?m)^  scratch_file = "(.+)"$`).FindStringSubmatch(conf)
	if m == nil {
		t.Fatalf("no scratch_file in %q", conf)
	}
	st, err := os.Stat(m[1])
	if err != nil || st.Size() != 128<<20 {
		t.Fatalf("the scratch image: %v (%v), want 128 MiB", st, err)
	}
	assertExt4(t, m[1])
}

func TestMakeExt4(t *testing.T) {
	from := t.TempDir()
	if err := os.WriteFile(filepath.Join(from, "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "root.ext4")
	MakeExt4(t, img, "8M", from)
	if st, err := os.Stat(img); err != nil || st.Size() != 8<<20 {
		t.Fatalf("the image: %v (%v), want 8 MiB", st, err)
	}
	assertExt4(t, img)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`hello`).Match(b) {
		t.Errorf("the image does not hold the directory's file")
	}
}

// assertExt4 fails unless img's superblock has the ext2/3/4 magic.
func assertExt4(t *testing.T, img string) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 1082 || binary.LittleEndian.Uint16(b[1080:]) != 0xef53 {
		t.Errorf("%s has no ext4 superblock", img)
	}
}
