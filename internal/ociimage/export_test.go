package ociimage

import (
	"os"
	"testing"
)

// TestExportBusybox writes the busybox archive to $HULL_OCI_EXPORT: the
// entry point hack/demo.sh uses until the hull CLI exposes WriteBusybox.
func TestExportBusybox(t *testing.T) {
	out := os.Getenv("HULL_OCI_EXPORT")
	if out == "" {
		t.Skip("HULL_OCI_EXPORT not set")
	}
	if err := WriteBusyboxFile(out, BusyboxOptions{Name: os.Getenv("HULL_OCI_NAME")}); err != nil {
		t.Fatal(err)
	}
}
