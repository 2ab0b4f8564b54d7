package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// TestConsoleCopy stands in for QEMU's console socket: it writes far more
// than the bound, and the copy keeps console.log and console.log.1 within
// it, with the last lines readable through the log.
func TestConsoleCopy(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, consoleSocketName)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	const bound, lines = 8 << 10, 20000
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer func() { _ = conn.Close() }()
		for i := range lines {
			if _, err := fmt.Fprintf(conn, "console line %d\r\n", i); err != nil {
				served <- err
				return
			}
		}
		served <- nil
	}()
	lg, err := child.OpenLog(filepath.Join(dir, consoleLogName), bound)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialConsole(ctx, sock, lg, func() bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	// The writer closed its end: the copy ends by itself.
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the copy did not end at end of stream")
	}
	c.close(0)
	for _, f := range []string{lg.Path(), child.RotatedPath(lg.Path())} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > bound {
			t.Errorf("%s has %d bytes, bound %d", f, st.Size(), bound)
		}
	}
	got := lg.TailLines(2, consoleTailBytes)
	if want := []string{fmt.Sprintf("console line %d", lines-2), fmt.Sprintf("console line %d", lines-1)}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("tail %q, want %q", got, want)
	}
	_ = lg.Close()
}

// TestDialConsoleGivesUp: no socket and QEMU gone is an exited error at
// once; no socket and QEMU alive waits for ctx.
func TestDialConsoleGivesUp(t *testing.T) {
	dir := t.TempDir()
	lg, err := child.OpenLog(filepath.Join(dir, consoleLogName), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lg.Close() }()
	sock := filepath.Join(dir, consoleSocketName)
	_, err = dialConsole(context.Background(), sock, lg, func() bool { return false })
	if !errors.Is(err, hypervisor.ErrVMExited) {
		t.Errorf("qemu gone: got %v, want ErrVMExited", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = dialConsole(ctx, sock, lg, func() bool { return true })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no socket: got %v, want a deadline error", err)
	}
}
