package shim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/fifo"
)

// slowWriter is a copy destination that takes its time, so that input
// waits in the FIFO.
type slowWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *slowWriter) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Len()
}

// TestCloseStdinDrains checks that CloseIO, asked for right after the
// client's last write (as ctr does), lets the copy take everything the FIFO
// still holds before the input ends.
func TestCloseStdinDrains(t *testing.T) {
	ctx := context.Background()
	path, pio := openStdinFIFO(t, "drain")

	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB
	dst := &slowWriter{}
	copied := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{pio.stdin}, make([]byte, 4096))
		copied <- err
	}()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	// The client's last write is done; part of it is still in the FIFO.
	pio.closeStdin()
	_ = w.Close()
	select {
	case err := <-copied:
		if err != nil && !errors.Is(err, os.ErrClosed) {
			t.Fatalf("copy: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the copy did not end after closeStdin")
	}
	if dst.Len() != len(data) {
		t.Fatalf("copied %d bytes of %d", dst.Len(), len(data))
	}
}

// TestCloseStdinNoWriter checks that CloseIO for a FIFO that no client
// opened returns at once and ends the copy.
func TestCloseStdinNoWriter(t *testing.T) {
	_, pio := openStdinFIFO(t, "nowriter")
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, pio.stdin)
		copied <- err
	}()
	start := time.Now()
	pio.closeStdin()
	if took := time.Since(start); took > time.Second {
		t.Errorf("closeStdin took %s with no writer", took)
	}
	select {
	case err := <-copied:
		if err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, fifo.ErrReadClosed) {
			t.Fatalf("copy: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the copy did not end after closeStdin")
	}
}

// openStdinFIFO makes a stdin FIFO and opens it as the shim does for a
// process id; the stdio is closed when the test ends.
func openStdinFIFO(t *testing.T, id string) (string, *processIO) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stdin")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	pio, err := openIO(context.Background(), "default", id, stdioPaths{stdin: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pio.Close(context.Background()) })
	return path, pio
}
