package bootslot

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// holderEnv makes the test binary a process that holds one slot of the
// gate in the named directory until it is killed.
const holderEnv = "BOOTSLOT_TEST_HOLD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(holderEnv); dir != "" {
		s, err := Gate{Dir: dir, Slots: 1, MaxWait: 5 * time.Second}.Acquire(context.Background())
		if err != nil {
			os.Exit(3)
		}
		if _, err := os.Stdout.WriteString("held\n"); err != nil {
			os.Exit(4)
		}
		time.Sleep(time.Hour)
		_ = s.Release()
	}
	os.Exit(m.Run())
}

func TestAcquire(t *testing.T) {
	t.Run("bounded", func(t *testing.T) {
		g := Gate{Dir: t.TempDir(), Slots: 2, MaxWait: 300 * time.Millisecond}
		held := map[int]bool{}
		for range 2 {
			s, err := g.Acquire(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Release() })
			held[s.Index] = true
		}
		if len(held) != 2 {
			t.Fatalf("two acquires got slots %v, want 0 and 1", held)
		}
		start := time.Now()
		_, err := g.Acquire(context.Background())
		if !errors.Is(err, ErrNoSlot) || !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("third acquire: %v, want ErrNoSlot", err)
		}
		if took := time.Since(start); took < g.MaxWait {
			t.Errorf("third acquire failed after %s, before its bound %s", took, g.MaxWait)
		}
		if !strings.Contains(err.Error(), "waited") || !strings.Contains(err.Error(), "2 boot slots") {
			t.Errorf("error %q does not name the wait and the slots", err)
		}
	})
	t.Run("waits for a release", func(t *testing.T) {
		g := Gate{Dir: t.TempDir(), Slots: 1, MaxWait: 10 * time.Second}
		s, err := g.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		const hold = 300 * time.Millisecond
		released := make(chan struct{})
		go func() {
			defer close(released)
			time.Sleep(hold)
			_ = s.Release()
		}()
		s2, err := g.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = s2.Release() }()
		if s2.Waited < hold-50*time.Millisecond {
			t.Errorf("second acquire waited %s, want about %s", s2.Waited, hold)
		}
		<-released
		if err := s.Release(); err != nil {
			t.Errorf("second release: %v", err)
		}
	})
	t.Run("context ends the wait", func(t *testing.T) {
		g := Gate{Dir: t.TempDir(), Slots: 1, MaxWait: time.Minute}
		s, err := g.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = s.Release() }()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := g.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("acquire with an ending context: %v, want DeadlineExceeded", err)
		}
	})
	t.Run("bad gate", func(t *testing.T) {
		for _, g := range []Gate{
			{Dir: t.TempDir(), Slots: 0, MaxWait: time.Second},
			{Dir: t.TempDir(), Slots: 1, MaxWait: 0},
			{Dir: "relative", Slots: 1, MaxWait: time.Second},
		} {
			if _, err := g.Acquire(context.Background()); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%+v: %v, want ErrInvalidArgument", g, err)
			}
		}
	})
}

// TestChildren checks that a slot is not inherited by the processes its
// holder starts (the VMM), and that the kernel frees the slot of a holder
// killed with SIGKILL.
func TestChildren(t *testing.T) {
	t.Run("not inherited", func(t *testing.T) {
		g := Gate{Dir: t.TempDir(), Slots: 1, MaxWait: 300 * time.Millisecond}
		s, err := g.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		child := exec.Command("sleep", "30")
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
		if err := s.Release(); err != nil {
			t.Fatal(err)
		}
		s2, err := g.Acquire(context.Background())
		if err != nil {
			t.Fatalf("the slot stays held by the holder's child: %v", err)
		}
		_ = s2.Release()
	})
	t.Run("freed by SIGKILL", func(t *testing.T) {
		dir := t.TempDir()
		holder := exec.Command(os.Args[0], "-test.run=^$")
		holder.Env = append(os.Environ(), holderEnv+"="+dir)
		out, err := holder.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := holder.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = holder.Process.Kill(); _ = holder.Wait() }()
		buf := make([]byte, 5)
		if _, err := out.Read(buf); err != nil || string(buf) != "held\n" {
			t.Fatalf("holder: %q, %v", buf, err)
		}
		g := Gate{Dir: dir, Slots: 1, MaxWait: 200 * time.Millisecond}
		if _, err := g.Acquire(context.Background()); !errors.Is(err, ErrNoSlot) {
			t.Fatalf("acquire while another process holds the slot: %v, want ErrNoSlot", err)
		}
		if err := holder.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = holder.Wait()
		g.MaxWait = 2 * time.Second
		s, err := g.Acquire(context.Background())
		if err != nil {
			t.Fatalf("acquire after the holder was killed: %v", err)
		}
		_ = s.Release()
		if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != "0" {
			t.Errorf("slot directory holds %v, want the one slot file", ents)
		}
		if _, err := os.Stat(filepath.Join(dir, "0")); err != nil {
			t.Error(err)
		}
	})
}
