package main

import (
	"context"
	"io/fs"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/kvm"
)

// TestDebugShellDetail: hull check and hull env say "yes" with the shell's
// path, size and sha256 when the manifest records one, "no" otherwise.
func TestDebugShellDetail(t *testing.T) {
	const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name  string
		shell *guestimage.DebugShellInfo
		want  []string
	}{
		{"none", nil, []string{"no (", "--debug-shell"}},
		{"busybox", &guestimage.DebugShellInfo{Path: channel.DebugShellPath, SHA256: sum, Size: 1982256},
			[]string{"yes: " + channel.DebugShellPath, "1982256 bytes", "sha256 " + sum}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := debugShellDetail(&guestimage.Manifest{DebugShell: tc.shell})
			for _, w := range tc.want {
				if !strings.HasPrefix(got, tc.want[0]) || !strings.Contains(got, w) {
					t.Errorf("detail %q, want it to start with %q and say %q", got, tc.want[0], w)
				}
			}
		})
	}
}

// TestPauseCheck: hull check warns about an image without hull-pause, in
// which an agent of this release fails every CRI pod's sandbox container,
// and names the binary otherwise.
func TestPauseCheck(t *testing.T) {
	const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	st, detail := pauseCheck(&guestimage.Manifest{})
	if st != statusWarn || !strings.Contains(detail, "CRI pods") || !strings.Contains(detail, "hull image build") {
		t.Errorf("no pause: %s %q, want a warning naming CRI pods and saying to rebuild", st, detail)
	}
	st, detail = pauseCheck(&guestimage.Manifest{Pause: &guestimage.AgentInfo{SHA256: sum, Size: 682696}})
	if st != statusOK || detail != channel.PauseBinaryPath+", 682696 bytes, sha256 "+sum {
		t.Errorf("pause: %s %q", st, detail)
	}
}

// TestVhostNetCheck: hull check says vhost-net is used exactly when the
// driver's test of the device passes, and why not otherwise.
func TestVhostNetCheck(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		status string
		want   string
	}{
		{"opens", nil, statusOK, "pod NICs use vhost-net"},
		{"missing", &fs.PathError{Op: "open", Path: qemu.VhostNetDevice, Err: syscall.ENOENT},
			statusWarn, "open /dev/vhost-net: no such file or directory: pod NICs run without vhost-net"},
		{"refused", &fs.PathError{Op: "open", Path: qemu.VhostNetDevice, Err: syscall.EACCES},
			statusWarn, "permission denied: pod NICs run without vhost-net"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, detail := vhostNetCheck(tc.err)
			if st != tc.status || !strings.Contains(detail, tc.want) {
				t.Errorf("got %s %q, want %s with %q", st, detail, tc.status, tc.want)
			}
		})
	}
}

// TestResolveAccel: hull env says which accelerator a VM gets, and logs
// the fallback to TCG at warning level.
func TestResolveAccel(t *testing.T) {
	for _, tc := range []struct {
		name, accel string
		usable      bool
		want        string
		warn        bool
	}{
		{"auto, kvm usable", "auto", true, "kvm", false},
		{"auto, kvm unusable", "auto", false, "tcg", true},
		{"tcg configured", "tcg", true, "tcg", false},
		{"kvm configured", "kvm", false, "kvm", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logger, hook := logtest.NewNullLogger()
			ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))
			got := resolveAccel(ctx, tc.accel, kvm.Result{Usable: tc.usable, Reason: "test says no"})
			warned := false
			for _, e := range hook.AllEntries() {
				warned = warned || (e.Level == logrus.WarnLevel && strings.Contains(e.Message, "falling back to TCG") && e.Data["kvm"] == "test says no")
			}
			if got != tc.want || warned != tc.warn {
				t.Errorf("got %s, warned %v; want %s, warned %v", got, warned, tc.want, tc.warn)
			}
		})
	}
}
