//go:build hulltest_hostile

package agent

import (
	"testing"
)

func TestParseHostile(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cmdline  string
		modes    []string
		pid      uint32
		warnings int
	}{
		{"none", "console=ttyS0 hull.log=debug", nil, 1, 0},
		{"several", "hull.hostile=console,nowait,pid:0", []string{"console", "nowait", "pid"}, 0, 0},
		{"pid default", "hull.hostile=pid", []string{"pid"}, 1, 0},
		{"unknown and bad pid", "hull.hostile=fly,pid:x", []string{"pid"}, 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, w := parseHostile(tc.cmdline)
			if len(h.modes) != len(tc.modes) || h.pid != tc.pid || len(w) != tc.warnings {
				t.Fatalf("got modes %v pid %d warnings %q, want %v %d %d", h.modes, h.pid, w, tc.modes, tc.pid, tc.warnings)
			}
			for _, m := range tc.modes {
				if !h.modes[m] {
					t.Errorf("mode %s not set: %v", m, h.modes)
				}
			}
		})
	}
}
