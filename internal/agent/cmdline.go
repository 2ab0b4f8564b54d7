package agent

import (
	"fmt"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/hull-runtime/hull/internal/channel"
)

// bootConfig is what the agent reads from the kernel command line.
type bootConfig struct {
	Transport channel.Transport
	LogLevel  logrus.Level
	// DebugConsole enables System.DebugConsole.
	DebugConsole bool
	// Tracing records spans for the host (Tracing.ReadSpans).
	Tracing bool
}

func defaultBootConfig() bootConfig {
	return bootConfig{Transport: channel.DefaultTransport, LogLevel: logrus.InfoLevel}
}

// parseCmdline reads the hull.* parameters of a kernel command line. A bad
// value keeps the default and adds a warning that names the parameter; the
// last occurrence of a parameter wins, as in the kernel.
func parseCmdline(cmdline string) (bootConfig, []string) {
	c := defaultBootConfig()
	var warnings []string
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case channel.ParamTransport:
			t, err := channel.ParseTransport(v)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("%v; using %s", err, c.Transport))
				continue
			}
			c.Transport = t
		case channel.ParamLog:
			lvl, err := logrus.ParseLevel(v)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("%s=%q: unknown log level; using %s", channel.ParamLog, v, c.LogLevel))
				continue
			}
			c.LogLevel = lvl
		case channel.ParamTracing:
			c.Tracing = v == "1"
			if v != "1" && v != "0" {
				warnings = append(warnings, fmt.Sprintf("%s=%q: want 1 or 0; tracing stays off", channel.ParamTracing, v))
			}
		case channel.ParamDebugConsole:
			switch v {
			case "1":
				c.DebugConsole = true
			case "0":
				c.DebugConsole = false
			default:
				c.DebugConsole = false
				warnings = append(warnings, fmt.Sprintf("%s=%q: want 1 or 0; the debug console stays off", channel.ParamDebugConsole, v))
			}
		}
	}
	return c, warnings
}
