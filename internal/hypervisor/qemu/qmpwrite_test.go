package qemu

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestQMPPartialWrite: a command whose write ends part way (QEMU reads
// nothing, the caller's deadline passes) leaves QEMU's parser with part of
// it, which the next command would complete into something else, or which
// QEMU may run once it has the closing brace. The connection is closed
// then: no later command goes out on a stream out of step.
func TestQMPPartialWrite(t *testing.T) {
	busy := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	path := fakeQMPArgs(t, func(cmd string, _ json.RawMessage, id string) []string {
		if cmd == "block" {
			// QEMU stops reading its monitor.
			close(busy)
			<-release
		}
		b, _ := json.Marshal(map[string]any{"return": struct{}{}, "id": id})
		return []string{string(b)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, path, func() bool { return true }, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.close)
	go func() { _, _ = q.execute(context.Background(), "block", nil) }()
	<-busy
	// Far more than a socket buffer holds. A write may also end before
	// any byte went out (that is no partial write): try until one went
	// out in part.
	big := strings.Repeat("x", 1<<20)
	for range 20 {
		wctx, wcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_, err := q.execute(wctx, "big", map[string]any{"x": big})
		wcancel()
		if err == nil {
			t.Fatal("a command QEMU could not read was answered")
		}
		select {
		case <-q.closed:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatal("the connection stays open after commands went out in part")
}
