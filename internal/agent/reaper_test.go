package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want procStat
		err  bool
	}{
		{name: "plain", in: "42 (sleep) Z 1 40 39 0 -1", want: procStat{state: 'Z', ppid: 1, pgrp: 40, session: 39}},
		{name: "parens and spaces in comm", in: "7 (a) b (c) S 3 7 6", want: procStat{state: 'S', ppid: 3, pgrp: 7, session: 6}},
		{name: "no comm", in: "7 sleep S 3 7 7", err: true},
		{name: "short", in: "7 (x) S", err: true},
		{name: "no session", in: "7 (x) S 3 7", err: true},
		{name: "bad ppid", in: "7 (x) S y 7 7", err: true},
		{name: "bad session", in: "7 (x) S 3 7 y", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("parseStat(%q) = %+v, %v", tc.in, got, err)
			}
		})
	}
}

func TestUnowned(t *testing.T) {
	for _, tc := range []struct {
		name    string
		zombies []int
		owned   map[int]int
		want    []int
	}{
		{"none owned", []int{5, 6}, map[int]int{}, []int{5, 6}},
		{"some owned", []int{5, 6, 7}, map[int]int{6: 1}, []int{5, 7}},
		{"all owned", []int{5}, map[int]int{5: 2}, nil},
		{"no zombies", nil, map[int]int{5: 1}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := unowned(tc.zombies, tc.owned); !slices.Equal(got, tc.want) {
				t.Fatalf("unowned = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReaperRegistry(t *testing.T) {
	r := newReaper("/proc")
	if err := r.spawn(func() ([]int, error) { return []int{10, 11}, nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := r.spawn(func() ([]int, error) { return []int{10}, boom }); !errors.Is(err, boom) {
		t.Fatalf("spawn error = %v", err)
	}
	if r.owned[10] != 2 || r.owned[11] != 1 {
		t.Fatalf("owned = %v", r.owned)
	}
	r.release(10)
	r.release(11)
	if r.owned[10] != 1 || len(r.owned) != 1 {
		t.Fatalf("after release owned = %v", r.owned)
	}
	r.release(10)
	r.release(99) // never owned: harmless
	if len(r.owned) != 0 {
		t.Fatalf("after release owned = %v", r.owned)
	}
}

// TestReaperSubreaper makes the test process a child subreaper so that
// orphans come to it as they would to PID 1, and checks that the reaper
// reaps an orphan but leaves an owned child's exit status to its owner.
func TestReaperSubreaper(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })

	r := newReaper("/proc")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.run(ctx)

	// An owned child that exits at once: its status must reach cmd.Wait
	// even though SIGCHLD makes the reaper scan while it is a zombie.
	owned := exec.Command("sh", "-c", "exit 7")
	if err := r.spawn(func() ([]int, error) {
		if err := owned.Start(); err != nil {
			return nil, err
		}
		return []int{owned.Process.Pid}, nil
	}); err != nil {
		t.Fatal(err)
	}

	// An orphan: sh starts a short sleep in the background and exits; the
	// sleep is reparented to this process.
	parent := exec.Command("sh", "-c", "sleep 0.3 & echo $!")
	var out []byte
	if err := r.spawn(func() ([]int, error) {
		var err error
		out, err = parent.Output()
		return nil, err
	}); err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("orphan pid %q: %v", out, err)
	}

	time.Sleep(200 * time.Millisecond) // the reaper has seen the owned zombie
	err = owned.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("owned child Wait = %v, want exit status 7", err)
	}
	r.release(owned.Process.Pid)

	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(orphan) + "/stat")
			t.Fatalf("orphan %d not reaped: %s", orphan, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
