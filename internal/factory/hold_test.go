package factory

import (
	"runtime"
	"testing"
	"time"
)

// TestHoldOutlivesTheCall checks that a warm shim's hold on its state
// directory lasts for the process's life, as the warm shim uses it: taken
// once, its result not kept. A factory starting meanwhile must see it held.
func TestHoldOutlivesTheCall(t *testing.T) {
	dir := t.TempDir()
	func() {
		if err := Hold(dir); err != nil {
			t.Fatal(err)
		}
	}()
	// Let any finalizer of what Hold returned run.
	for range 5 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	held, err := Held(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !held {
		t.Fatal("the hold was released once its caller dropped the result: a starting factory would clean up a claimed sandbox")
	}
}
