package agent

import (
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/hull-runtime/hull/internal/channel"
)

func TestParseCmdline(t *testing.T) {
	def := defaultBootConfig()
	for _, tc := range []struct {
		name     string
		cmdline  string
		want     bootConfig
		warnings []string // substrings, in order
	}{
		{name: "empty", want: def},
		{
			name:    "serial and debug",
			cmdline: "console=ttyS0 quiet hull.transport=serial:agent.1 hull.log=debug panic=-1\n",
			want:    bootConfig{Transport: channel.Transport{Kind: "serial", PortName: "agent.1"}, LogLevel: logrus.DebugLevel},
		},
		{
			name:    "vsock",
			cmdline: "hull.transport=vsock:2048",
			want:    bootConfig{Transport: channel.Transport{Kind: "vsock", Port: 2048}, LogLevel: logrus.InfoLevel},
		},
		{
			name:    "last wins",
			cmdline: "hull.transport=vsock:5 hull.transport=serial:x",
			want:    bootConfig{Transport: channel.Transport{Kind: "serial", PortName: "x"}, LogLevel: logrus.InfoLevel},
		},
		{
			name:     "bad transport keeps default",
			cmdline:  "hull.transport=tcp:1 hull.log=warn",
			want:     bootConfig{Transport: def.Transport, LogLevel: logrus.WarnLevel},
			warnings: []string{`hull.transport="tcp:1"`},
		},
		{
			name:     "bad vsock port and level",
			cmdline:  "hull.transport=vsock:x hull.log=loud",
			want:     def,
			warnings: []string{"bad vsock port", `hull.log="loud": unknown log level; using info`},
		},
		{
			name:    "debug console on",
			cmdline: "quiet hull.debug_console=1",
			want:    bootConfig{Transport: def.Transport, LogLevel: logrus.InfoLevel, DebugConsole: true},
		},
		{
			name:    "debug console off, last wins",
			cmdline: "hull.debug_console=1 hull.debug_console=0",
			want:    def,
		},
		{
			name:     "debug console bad value is off",
			cmdline:  "hull.debug_console=1 hull.debug_console=yes",
			want:     def,
			warnings: []string{`hull.debug_console="yes": want 1 or 0; the debug console stays off`},
		},
		{
			name:     "debug console without value is off",
			cmdline:  "hull.debug_console",
			want:     def,
			warnings: []string{`hull.debug_console="": want 1 or 0`},
		},
		{
			name:    "similar names ignored",
			cmdline: "hull.transports=vsock:1 xhull.log=debug hull.debug_consoles=1 hull.log",
			want:    def,
			warnings: []string{
				`hull.log="": unknown log level`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warnings := parseCmdline(tc.cmdline)
			if got != tc.want {
				t.Errorf("config = %+v, want %+v", got, tc.want)
			}
			if len(warnings) != len(tc.warnings) {
				t.Fatalf("warnings = %q, want %d", warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %d = %q, want it to contain %q", i, warnings[i], w)
				}
			}
		})
	}
}
