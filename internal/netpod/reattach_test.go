package netpod

import (
	"context"
	"testing"
)

// TestAttachAfterClose: a namespace attached and closed attaches again with
// the same devices, as a sandbox start retried after a failed VM start
// (another vsock CID, or the serial fallback) attaches it a second time.
func TestAttachAfterClose(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	first, err := Attach(ctx, p.ns.path)
	if err != nil {
		t.Fatal(err)
	}
	want := len(first.Devices())
	if want == 0 {
		t.Fatal("no devices mirrored: the case tests nothing")
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	second, err := Attach(ctx, p.ns.path)
	if err != nil {
		t.Fatalf("attaching again after Close: %v", err)
	}
	defer func() { _ = second.Close(ctx) }()
	if got := len(second.Devices()); got != want {
		t.Errorf("%d devices on the second attach, %d on the first", got, want)
	}
}
