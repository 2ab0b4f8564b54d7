package shim

import (
	"testing"
)

// podWithPids is a shim whose VMM has PID 4242 and whose pod sandbox
// container "pod" and member "app" run as guest PIDs 1 and 57; "app" has an
// exec "late" not started yet and an exec "forged" whose guest PID the
// guest reported as 0.
func podWithPids() *service {
	s := &service{containers: map[string]*container{}, sandboxID: "pod", vmPid: 4242}
	for id, pid := range map[string]uint32{"pod": 1, "app": 57} {
		p := newProc("", stdioPaths{}, nil)
		p.pid, p.made = pid, true
		s.containers[id] = &container{id: id, init: p, execs: map[string]*proc{}}
	}
	app := s.containers["app"]
	app.execs["late"] = newProc("late", stdioPaths{}, nil)
	forged := newProc("forged", stdioPaths{}, nil)
	forged.made = true
	app.execs["forged"] = forged
	return s
}

func TestHostPid(t *testing.T) {
	s := podWithPids()
	app := s.containers["app"]
	for _, tc := range []struct {
		name string
		p    *proc
		want uint32
	}{
		{"sandbox init", s.containers["pod"].init, 4242},
		{"member", app.init, 4242},
		{"exec not started", app.execs["late"], 0},
		{"guest reported PID 0", app.execs["forged"], 4242},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.pidOf(tc.p); got != tc.want {
				t.Errorf("pidOf(%s) = %d, want %d", tc.name, got, tc.want)
			}
		})
	}
}

func TestGuestNsPid(t *testing.T) {
	s := podWithPids()
	for _, tc := range []struct {
		name   string
		pid    uint32
		want   uint32
		wantOK bool
	}{
		{"the reported VMM pid", 4242, 1, true},
		{"the sandbox container's guest pid", 1, 0, false},
		{"a member's guest pid", 57, 0, false},
		{"another host pid", 4243, 0, false},
		{"zero", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := s.guestNsPid(tc.pid)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("guestNsPid(%d) = %d, %v; want %d, %v", tc.pid, got, ok, tc.want, tc.wantOK)
			}
		})
	}
	t.Run("no sandbox container", func(t *testing.T) {
		s := podWithPids()
		delete(s.containers, "pod")
		if got, ok := s.guestNsPid(4242); ok {
			t.Errorf("guestNsPid without the sandbox container = %d, true", got)
		}
	})
	t.Run("no vm yet", func(t *testing.T) {
		s := podWithPids()
		s.vmPid = 0
		if got, ok := s.guestNsPid(0); ok {
			t.Errorf("guestNsPid before the VM = %d, true", got)
		}
	})
}
