package sandbox

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/bootslot"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

const testKillTimeout = 300 * time.Millisecond

func TestKillTimeout(t *testing.T) {
	ctx := context.Background()
	t.Run("guest never reports the exit", func(t *testing.T) {
		a := newFakeAgent()
		s := testSandbox(t, a, testKillTimeout)
		c := runningContainer(s, "c1")
		start := time.Now()
		if err := c.Signal(ctx, syscall.SIGKILL, false); err != nil {
			t.Fatal(err)
		}
		st := waitWithin(t, c.Init(), 10*time.Second)
		if st.Code != KilledStatus || !st.Declared {
			t.Fatalf("exit %+v, want %d declared by the host", st, KilledStatus)
		}
		if took := time.Since(start); took < testKillTimeout {
			t.Fatalf("declared dead after %s, before the kill timeout %s", took, testKillTimeout)
		}
		if c.State() != ContainerStopped {
			t.Fatalf("container is %s, want stopped", c.State())
		}
		// The guest's late report changes nothing.
		a.exit("c1", "", 0)
		time.Sleep(100 * time.Millisecond)
		if again := waitWithin(t, c.Init(), time.Second); again != st {
			t.Fatalf("exit changed from %+v to %+v after the guest's report", st, again)
		}
	})
	t.Run("guest reports the exit in time", func(t *testing.T) {
		a := newFakeAgent()
		s := testSandbox(t, a, 10*time.Second)
		c := runningContainer(s, "c1")
		if err := c.Signal(ctx, syscall.SIGKILL, false); err != nil {
			t.Fatal(err)
		}
		a.exit("c1", "", 3)
		st := waitWithin(t, c.Init(), 10*time.Second)
		if st.Code != 3 || st.Declared {
			t.Fatalf("exit %+v, want the guest's 3", st)
		}
	})
	t.Run("other signals are the guest's business", func(t *testing.T) {
		a := newFakeAgent()
		s := testSandbox(t, a, testKillTimeout)
		c := runningContainer(s, "c1")
		if err := c.Signal(ctx, syscall.SIGTERM, true); err != nil {
			t.Fatal(err)
		}
		stillRunning(t, c.Init(), 3*testKillTimeout)
	})
	t.Run("all covers the execs", func(t *testing.T) {
		a := newFakeAgent()
		s := testSandbox(t, a, testKillTimeout)
		c := runningContainer(s, "c1")
		e := runningExec(c, "e1")
		other := runningExec(runningContainer(s, "c2"), "e2")
		if err := c.Signal(ctx, syscall.SIGKILL, true); err != nil {
			t.Fatal(err)
		}
		for _, p := range []*Process{c.Init(), e} {
			if st := waitWithin(t, p, 10*time.Second); st.Code != KilledStatus || !st.Declared {
				t.Fatalf("%s: exit %+v, want %d declared", p.name(), st, KilledStatus)
			}
		}
		stillRunning(t, other, testKillTimeout)
	})
	t.Run("an exec alone", func(t *testing.T) {
		a := newFakeAgent()
		s := testSandbox(t, a, testKillTimeout)
		c := runningContainer(s, "c1")
		e := runningExec(c, "e1")
		if err := e.Signal(ctx, syscall.SIGKILL, false); err != nil {
			t.Fatal(err)
		}
		if st := waitWithin(t, e, 10*time.Second); st.Code != KilledStatus || !st.Declared {
			t.Fatalf("exit %+v, want %d declared", st, KilledStatus)
		}
		stillRunning(t, c.Init(), testKillTimeout)
	})
}

func TestDeleteWithoutTheGuest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name  string
		setup func(*fakeAgent)
	}{
		{"guest refuses", func(a *fakeAgent) { a.removeErr = errdefs.ErrPermissionDenied }},
		{"guest does not answer", func(a *fakeAgent) { a.hangRemove = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeAgent()
			tc.setup(a)
			s := testSandbox(t, a, testKillTimeout)
			c := runningContainer(s, "c1")
			a.exit("c1", "", 0)
			waitWithin(t, c.Init(), 10*time.Second)
			if err := c.Delete(ctx, false); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if _, err := s.Container("c1"); !errdefs.IsNotFound(err) {
				t.Fatalf("the host still has the container: %v", err)
			}
			if c.State() != ContainerDeleted {
				t.Fatalf("container is %s, want deleted", c.State())
			}
		})
	}
	t.Run("forced, guest silent", func(t *testing.T) {
		a := newFakeAgent()
		a.hangRemove = true
		s := testSandbox(t, a, testKillTimeout)
		c := runningContainer(s, "c1")
		e := runningExec(c, "e1")
		if err := c.Delete(ctx, true); err != nil {
			t.Fatalf("delete: %v", err)
		}
		for _, p := range []*Process{c.Init(), e} {
			if st := waitWithin(t, p, time.Second); st.Code != KilledStatus || !st.Declared {
				t.Fatalf("%s: exit %+v, want %d declared", p.name(), st, KilledStatus)
			}
		}
		if _, err := s.Container("c1"); !errdefs.IsNotFound(err) {
			t.Fatalf("the host still has the container: %v", err)
		}
	})
}

func TestGuestExitChecked(t *testing.T) {
	s := &Sandbox{id: "sb", bg: context.Background()}
	p := &Process{c: &Container{sb: s, id: "c1"}}
	now := time.Now()
	for _, tc := range []struct {
		name     string
		status   int32
		at       *timestamppb.Timestamp
		wantCode int
		guestAt  bool
	}{
		{"plain", 7, timestamppb.New(now.Add(-time.Second)), 7, true},
		{"signal", 137, timestamppb.New(now.Add(-time.Second)), 137, true},
		{"beyond 255", 1 << 20, nil, 255, false},
		{"negative", -1, nil, 255, false},
		{"in the future", 0, timestamppb.New(now.Add(time.Hour)), 0, false},
		{"invalid time", 0, &timestamppb.Timestamp{Seconds: -1 << 62}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := p.guestExit(&api.WaitProcessResponse{ExitStatus: tc.status, ExitedAt: tc.at})
			if st.Code != tc.wantCode {
				t.Errorf("code %d, want %d", st.Code, tc.wantCode)
			}
			if got := tc.at != nil && st.At.Equal(tc.at.AsTime()); got != tc.guestAt {
				t.Errorf("time %s taken from the guest: %t, want %t", st.At, got, tc.guestAt)
			}
			if st.At.After(time.Now()) {
				t.Errorf("time %s is in the future", st.At)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	w := window{n: 3, period: time.Second}
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if !w.allow(t0.Add(time.Duration(i) * time.Millisecond)) {
			t.Fatalf("event %d refused", i)
		}
	}
	if w.allow(t0.Add(500 * time.Millisecond)) {
		t.Fatal("fourth event in the window allowed")
	}
	if !w.allow(t0.Add(time.Second)) {
		t.Fatal("event of the next window refused")
	}
	p := window{n: 1, period: time.Second}
	if d := p.wait(t0); d != 0 {
		t.Fatalf("first wait %s", d)
	}
	if d := p.wait(t0.Add(200 * time.Millisecond)); d != 800*time.Millisecond {
		t.Fatalf("second wait %s, want 800ms", d)
	}
}

func TestOOMFilter(t *testing.T) {
	owned := &Container{id: "mine"}
	var hook logCount
	l := logrus.New()
	l.Out = nopWriter{}
	l.AddHook(&hook)
	f := oomFilter{
		owned: func(id string) *Container {
			if id == "mine" {
				return owned
			}
			return nil
		},
		logger: logrus.NewEntry(l),
	}
	t0 := time.Unix(1000, 0)
	delivered := 0
	for i := range 100 {
		now := t0.Add(time.Duration(i) * time.Millisecond)
		if f.admit("other", now) {
			t.Fatal("an event naming another container was admitted")
		}
		if f.admit("mine", now) {
			delivered++
		}
	}
	if delivered != oomPerContainer {
		t.Fatalf("%d events of one container admitted in 100 ms, want %d", delivered, oomPerContainer)
	}
	if hook.n != 1 {
		t.Fatalf("%d logs of dropped events in 100 ms, want 1", hook.n)
	}
	if !f.admit("mine", t0.Add(2*time.Second)) {
		t.Fatal("an event in a later window was dropped")
	}
}

func TestOOMLoopDropsForeignIDs(t *testing.T) {
	a := newFakeAgent()
	s := testSandbox(t, a, testKillTimeout)
	runningContainer(s, "mine")
	for range 5 {
		a.ooms <- "../../someone-else"
	}
	a.ooms <- "mine"
	go s.oomLoop(s.id)
	select {
	case id := <-s.OOMEvents():
		if id != "mine" {
			t.Fatalf("OOM event for %q delivered", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no OOM event")
	}
	select {
	case id := <-s.OOMEvents():
		t.Fatalf("second OOM event %q", id)
	case <-time.After(200 * time.Millisecond):
	}
}

type logCount struct{ n int }

func (h *logCount) Levels() []logrus.Level { return []logrus.Level{logrus.WarnLevel} }
func (h *logCount) Fire(*logrus.Entry) error {
	h.n++
	return nil
}

type nopWriter struct{}

func (nopWriter) Write(b []byte) (int, error) { return len(b), nil }

// TestSignalAfterTheVMExited: a signal to a process whose VM exited fails
// as one to an exited process does (not found), so that a forced delete or
// a CRI stop waits for the exit instead of failing; also when the call
// fails a moment before the VM is seen gone.
func TestSignalAfterTheVMExited(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := newFakeAgent()
	// What the call meets once QEMU is gone: the connection ends.
	a.signalErr = errgrpc.ToGRPC(errdefs.ErrUnavailable)
	s := testSandbox(t, a, testKillTimeout)
	c := runningContainer(s, "c1")
	// SIGTERM: a SIGKILL would have the process declared killed.
	if err := c.Init().Signal(ctx, syscall.SIGTERM, false); err == nil || errdefs.IsNotFound(err) {
		t.Fatalf("SIGTERM, the VM alive: %v, want the guest's error", err)
	}
	// The connection ends a moment before QEMU is seen gone.
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = s.vm.Stop(ctx)
	}()
	err := c.Init().Signal(ctx, syscall.SIGKILL, false)
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "the VM exited") {
		t.Fatalf("SIGKILL after the VM exited: %v, want not found, saying the VM exited", err)
	}
}

// TestStopSkipsGuestShutdownAfterDestroy checks that Stop ends the VM
// without the guest's orderly shutdown once the guest destroyed its
// sandbox (every container gone, every storage unmounted), and asks for
// the shutdown when it did not.
func TestStopSkipsGuestShutdownAfterDestroy(t *testing.T) {
	for _, tc := range []struct {
		name         string
		destroyErr   error
		wantShutdown int
	}{
		{"guest sandbox destroyed", nil, 0},
		{"destroy failed", errdefs.ErrUnavailable, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeAgent()
			a.destroyErr = tc.destroyErr
			s := testSandbox(t, a, time.Second)
			if err := s.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.destroys != 1 || a.shutdowns != tc.wantShutdown {
				t.Errorf("DestroySandbox %d calls, Shutdown %d: want 1 and %d", a.destroys, a.shutdowns, tc.wantShutdown)
			}
			if s.vmAlive() {
				t.Error("the vm still runs after Stop")
			}
		})
	}
}

// TestPodStepsSetTimeWithGuestSandbox checks that a start's or adoption's
// pod steps set the guest's clock and create the guest sandbox at the same
// time (one round trip to the guest): the fake agent answers SetTime only
// once CreateSandbox has arrived. The phases keep their order.
func TestPodStepsSetTimeWithGuestSandbox(t *testing.T) {
	a := newFakeAgent()
	a.sandboxCreated = make(chan struct{})
	a.timeSetAfter = a.sandboxCreated
	s := testSandbox(t, a, time.Second)
	var undo cleanups
	if err := s.runSteps(t.Context(), tracer(nil), "sb", "starting", s.podSteps(Config{ID: "sb"}, false, &undo)); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range s.phases {
		names = append(names, p.Name)
	}
	want := []string{"hot-add pod network", "set guest time", "create guest sandbox", "configure guest network", "serve debug consoles"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("phases %q, want %q", names, want)
	}
}

// TestPodStepsReseedBeforeGuestSandbox checks that a restored guest's RNG
// is reseeded by a pod's start before the guest sandbox is made (the fake
// agent notes how many AddEntropy calls it answered when CreateSandbox
// arrives); that a warm start's sandbox, reseeded as it booted, is not
// reseeded again by its adoption's pod steps; and that a booted guest is
// not reseeded.
func TestPodStepsReseedBeforeGuestSandbox(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		restored, reseedWithPod bool
		want                    int
	}{
		{"restored pod start", true, true, 1},
		{"adopted warm vm", true, false, 0},
		{"booted", false, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeAgent()
			a.entropyAtSandbox = -1
			s := testSandbox(t, a, time.Second)
			s.restored, s.reseedWithPod = tc.restored, tc.reseedWithPod
			var undo cleanups
			if err := s.runSteps(t.Context(), tracer(nil), "sb", "starting", s.podSteps(Config{ID: "sb"}, false, &undo)); err != nil {
				t.Fatal(err)
			}
			a.mu.Lock()
			got, atSandbox := a.entropyAdded, a.entropyAtSandbox
			a.mu.Unlock()
			if got != tc.want || atSandbox != tc.want {
				t.Errorf("%d AddEntropy calls, %d of them before CreateSandbox: want %d", got, atSandbox, tc.want)
			}
		})
	}
}

// TestStartStepsReseedOnce checks that a start's steps, pod steps
// included or not (a warm start), name the reseed once (a phase name is a
// metric's label) and that an adoption's pod steps do not name it: a warm
// VM was reseeded at its restore.
func TestStartStepsReseedOnce(t *testing.T) {
	names := func(steps []step) map[string]int {
		n := map[string]int{}
		for _, st := range steps {
			n[st.name]++
			for _, g := range st.together {
				n[g.name]++
			}
		}
		return n
	}
	var slot *bootslot.Slot
	var undo cleanups
	for _, warm := range []bool{false, true} {
		s := &Sandbox{reseedWithPod: !warm}
		steps := s.bootSteps(Config{}, hypervisor.AgentEndpoint{}, &slot, &undo)
		if !warm {
			steps = append(steps, s.podSteps(Config{ID: "sb"}, false, &undo)...)
		}
		for name, n := range names(steps) {
			if name != "" && n != 1 {
				t.Errorf("warm %v: step %q %d times", warm, name, n)
			}
		}
		if n := names(steps)["reseed guest rng"]; n != 1 {
			t.Errorf("warm %v: the reseed %d times, want once", warm, n)
		}
		if warm {
			// The adoption's pod steps, on the warm sandbox.
			if n := names(s.podSteps(Config{ID: "sb"}, true, &undo))["reseed guest rng"]; n != 0 {
				t.Errorf("an adoption reseeds %d times, want none", n)
			}
		}
	}
}

// TestRunStepsTogetherError checks that a failed step of a group fails the
// run with that step's name once the whole group is done, and records no
// phase of the group.
func TestRunStepsTogetherError(t *testing.T) {
	s := &Sandbox{}
	otherDone := false
	steps := []step{{together: []step{
		{name: "fails", run: func(context.Context) error { return errdefs.ErrUnavailable }},
		{name: "slow", run: func(context.Context) error { time.Sleep(50 * time.Millisecond); otherDone = true; return nil }},
	}}}
	err := s.runSteps(t.Context(), tracer(nil), "sb", "starting", steps)
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "starting sandbox sb: fails:") {
		t.Errorf("run: %v, want the failed step's error under its name", err)
	}
	if !otherDone {
		t.Error("the run returned before the group's other step was done")
	}
	if len(s.phases) != 0 {
		t.Errorf("phases %v recorded for a failed group", s.phases)
	}
}

// TestRunStepsTogetherCancel checks that the first step of a group to fail
// cancels the others' context, and that the run reports that step, not
// one that failed only for the cancel (listed before it in the group).
func TestRunStepsTogetherCancel(t *testing.T) {
	s := &Sandbox{}
	cancelled := false
	steps := []step{{together: []step{
		{name: "waits", run: func(ctx context.Context) error {
			select {
			case <-ctx.Done():
				cancelled = true
				return ctx.Err()
			case <-time.After(30 * time.Second):
				return errors.New("not cancelled")
			}
		}},
		{name: "fails", run: func(context.Context) error { return errdefs.ErrUnavailable }},
	}}}
	err := s.runSteps(t.Context(), tracer(nil), "sb", "starting", steps)
	if !cancelled {
		t.Error("the group's other step was not cancelled when one failed")
	}
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "starting sandbox sb: fails:") {
		t.Errorf("run: %v, want the failed step's error under its name", err)
	}
}

// TestFormatPhases checks the phases of a "sandbox started" log line.
func TestFormatPhases(t *testing.T) {
	for _, tc := range []struct {
		name   string
		phases []Phase
		want   string
	}{
		{"none", nil, ""},
		{"one", []Phase{{"start vm", 154812 * time.Microsecond}}, "start vm=154.8ms"},
		{"instant steps left out", []Phase{{"create vm", 50 * time.Microsecond}, {"connect to agent", 2 * time.Second}, {"reseed guest rng", 0}},
			"connect to agent=2000.0ms"},
		{"several", []Phase{{"a", time.Millisecond}, {"b", 1500 * time.Microsecond}}, "a=1.0ms,b=1.5ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FormatPhases(tc.phases); got != tc.want {
				t.Errorf("FormatPhases = %q, want %q", got, tc.want)
			}
		})
	}
}
