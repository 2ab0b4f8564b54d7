package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// TestConsoleFloodBounded boots a guest whose init writes to the serial
// console without end and never serves the agent. While it floods, the
// console log and its rotated part stay within runtime.guest_log_max_bytes
// (and so does virtiofsd's log); the console rotates; and the start's
// error, which quotes ConsoleTail, ends with whole, recent flood lines.
func TestConsoleFloodBounded(t *testing.T) {
	const bound = 64 << 10
	c := testConfig(t)
	c.Agent.Transport = "serial"
	c.Hypervisor.Initrd = customInitrd(t, env.floodInit)
	c.Runtime.GuestLogMaxBytes = bound
	c.Agent.DialTimeout = config.Duration{Duration: 40 * time.Second}
	const id = "flood"
	sc, err := launch.SandboxConfig(c, id)
	if err != nil {
		t.Fatal(err)
	}
	dir := sandbox.StateDir(c.Runtime.StateDir, id)
	logs := []string{"console.log", "console.log.1", "virtiofsd.log", "virtiofsd.log.1"}

	started := make(chan error, 1)
	go func() {
		sb, err := sandbox.Start(withTimeout(t, 2*time.Minute), sc)
		if err == nil {
			_ = sb.Stop(withTimeout(t, time.Minute))
			err = errors.New("sandbox started with an init that never answers")
		}
		started <- err
	}()
	var largest int64
	rotated := false
	for done := false; !done; {
		select {
		case err = <-started:
			done = true
		case <-time.After(100 * time.Millisecond):
		}
		for _, name := range logs {
			st, serr := os.Stat(filepath.Join(dir, name))
			if serr != nil {
				continue
			}
			largest = max(largest, st.Size())
			if st.Size() > bound {
				t.Errorf("%s has %d bytes, bound %d", name, st.Size(), bound)
			}
			if name == "console.log.1" {
				rotated = true
			}
		}
	}
	t.Logf("largest log seen: %d bytes; console rotated: %v", largest, rotated)
	if !rotated {
		t.Error("the console never rotated: the flood did not reach the bound")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start error is not the dial timeout: %v", err)
	}
	// The error quotes the last console lines: whole flood lines, read
	// across the rotation.
	tail := regexp.MustCompile(`(?m)^\s*hull-flood: line [0-9]+ flooding the console\.+$`)
	if n := len(tail.FindAllString(err.Error(), -1)); n < 10 {
		t.Errorf("the error quotes %d whole flood lines, want the console tail:\n%v", n, err)
	}
}
