package main

import (
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/guestimage"
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
