package child

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	// 52 fields, as Linux 6.x writes them; the command name may hold
	// spaces and parentheses.
	tail := " 1 1 0 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0"
	for _, tc := range []struct {
		name, stat string
		want       procStat
		bad        bool
	}{
		{name: "plain", stat: "42 (qemu) S" + tail, want: procStat{state: 'S', pgrp: 1, startTime: 123456}},
		{name: "spaces and parens in the name", stat: "42 (a) b (c) Z" + tail, want: procStat{state: 'Z', pgrp: 1, startTime: 123456}},
		{name: "no name", stat: "42 qemu S" + tail, bad: true},
		{name: "truncated", stat: "42 (qemu) S 1 1 0", bad: true},
		{name: "bad start time", stat: "42 (qemu) S 1 1 0 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 x 1000", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.stat))
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// startSleeper starts a process that runs until the test ends, with its
// own process group as Start makes it.
func startSleeper(t *testing.T) (*exec.Cmd, Process) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	p, err := Identify(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, p
}

// TestKillReusedPID: a recorded PID whose start time differs from the
// running process's (the PID was reused) is never killed.
func TestKillReusedPID(t *testing.T) {
	cmd, p := startSleeper(t)
	if !p.Running() {
		t.Fatalf("%+v not running", p)
	}
	for _, other := range []Process{
		{PID: p.PID, StartTime: p.StartTime + 1},
		{PID: p.PID, StartTime: p.StartTime - 1},
		{PID: p.PID}, // no start time recorded
	} {
		if other.Running() {
			t.Errorf("%+v reported running, for process %+v", other, p)
		}
		killed, err := other.Kill()
		if killed || err != nil {
			t.Errorf("Kill of %+v: %v, %v; want nothing done", other, killed, err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if err := unix.Kill(cmd.Process.Pid, 0); err != nil {
		t.Fatalf("the process with the reused PID was hit: %v", err)
	}
	st, err := readStat(p.PID)
	if err != nil || st.state == 'Z' {
		t.Fatalf("the process with the reused PID is gone: %+v, %v", st, err)
	}

	killed, err := p.Kill()
	if !killed || err != nil {
		t.Fatalf("Kill of the recorded process: %v, %v", killed, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("the recorded process ended with %v, want SIGKILL", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the recorded process still runs")
	}
}

// TestKillGroup: Kill takes the process group a recorded leader leads.
func TestKillGroup(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 600 & echo $!; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	var helper int
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	if _, err := fmt.Sscan(string(buf[:n]), &helper); err != nil || helper <= 0 {
		t.Fatalf("helper pid %q: %v", buf[:n], err)
	}
	hp, err := Identify(helper)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Identify(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if killed, err := p.Kill(); !killed || err != nil {
		t.Fatalf("Kill: %v, %v", killed, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for hp.Running() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if hp.Running() {
		t.Error("the leader's helper in its process group still runs")
	}
}

// FuzzParseStat: any command name, which a process chooses itself, leaves
// the fields after it intact, and no input panics.
func FuzzParseStat(f *testing.F) {
	f.Add("qemu", uint64(123456))
	f.Add("a) S 1 1 (b", uint64(1))
	f.Add(")", uint64(18446744073709551615))
	f.Fuzz(func(t *testing.T, comm string, start uint64) {
		_, _ = parseStat([]byte(comm))
		stat := fmt.Sprintf("42 (%s) S 1 7 0 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 %d 1000 10", comm, start)
		got, err := parseStat([]byte(stat))
		if err != nil {
			t.Fatalf("%q: %v", stat, err)
		}
		if got.startTime != start || got.pgrp != 7 || got.state != 'S' {
			t.Fatalf("%q: parsed %+v", stat, got)
		}
	})
}
