package ociimage

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"testing"
)

func TestWriteBusyboxReproducible(t *testing.T) {
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skipf("no %s (apt-get install busybox-static)", DefaultBusybox)
	}
	var a, b bytes.Buffer
	if err := WriteBusybox(&a, BusyboxOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := WriteBusybox(&b, BusyboxOptions{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two builds differ")
	}
	names := map[string]bool{}
	tr := tar.NewReader(&a)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names[h.Name] = true
		if !h.ModTime.Equal(Epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want %v 0 0", h.Name, h.ModTime, h.Uid, h.Gid, Epoch)
		}
	}
	for _, n := range []string{"oci-layout", "index.json", "blobs/sha256/"} {
		if !names[n] {
			t.Errorf("archive lacks %s", n)
		}
	}
}
