package shim

import (
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSetCmdline sets this test process's command line, as a claimed warm
// shim sets its own, and reads it back as ps does; the program break is
// left where it was. With CAP_SYS_RESOURCE it must go through the single
// argument fields, else through the whole map.
func TestSetCmdline(t *testing.T) {
	wantHow := "map"
	if hasCap(t, unix.CAP_SYS_RESOURCE) {
		wantHow = "arg fields"
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"shorter than before", []string{"shim", "-id", "c1"}},
		{"longer than before", []string{os.Args[0], "-namespace", "k8s.io", "-id", strings.Repeat("0123456789abcdef", 4), "-address", "/run/containerd/containerd.sock", strings.Repeat("x", 5000)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			brk := programBreak(t)
			how, err := setCmdline(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if how != wantHow {
				t.Errorf("set through %q, want %q", how, wantHow)
			}
			if after := programBreak(t); after != brk {
				t.Errorf("the program break moved from %#x to %#x", brk, after)
			}
			b, err := os.ReadFile("/proc/self/cmdline")
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
			if !slices.Equal(got, tc.args) {
				t.Fatalf("/proc/self/cmdline = %q, want %q", got, tc.args)
			}
		})
	}
	// The other path, on a host that has CAP_SYS_RESOURCE: capabilities
	// are a thread's, and PR_SET_MM checks the calling thread's, so a
	// locked thread without it takes the map path. The thread is not
	// given back to the runtime (it ends with its goroutine). Where the
	// process lacks the capability in its bounding set (this project's
	// CI container), the arg-fields path cannot be taken at all.
	t.Run("without CAP_SYS_RESOURCE on the calling thread", func(t *testing.T) {
		args := []string{"shim", "-id", "c2"}
		type result struct {
			how string
			err error
		}
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // not unlocked: the thread goes with the goroutine
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			var data [2]unix.CapUserData
			if err := unix.Capget(&hdr, &data[0]); err != nil {
				done <- result{err: err}
				return
			}
			data[unix.CAP_SYS_RESOURCE/32].Effective &^= 1 << (unix.CAP_SYS_RESOURCE % 32)
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				done <- result{err: err}
				return
			}
			how, err := setCmdline(args)
			done <- result{how, err}
		}()
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.how != "map" {
			t.Errorf("set through %q without CAP_SYS_RESOURCE, want %q", r.how, "map")
		}
		b, err := os.ReadFile("/proc/self/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"); !slices.Equal(got, args) {
			t.Fatalf("/proc/self/cmdline = %q, want %q", got, args)
		}
	})
	t.Run("refused", func(t *testing.T) {
		for _, args := range [][]string{nil, {"a\x00b"}, {strings.Repeat("x", maxCmdline)}} {
			if _, err := setCmdline(args); err == nil {
				t.Errorf("setCmdline(%.20q) succeeded", args)
			}
		}
	})
}

// programBreak is the process's program break, brk(0).
func programBreak(t *testing.T) uintptr {
	t.Helper()
	brk, _, errno := unix.RawSyscall(unix.SYS_BRK, 0, 0, 0)
	if errno != 0 {
		t.Fatalf("brk: %v", errno)
	}
	return brk
}

// hasCap tells whether the process has capability c in its effective set.
func hasCap(t *testing.T, c int) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("CapEff %q: %v", v, err)
			}
			return eff&(1<<c) != 0
		}
	}
	t.Fatal("/proc/self/status: no CapEff")
	return false
}
