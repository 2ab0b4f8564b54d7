package ociruntime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/version"
)

// ConfigEnv names hull's configuration file when --hull-config does not.
const ConfigEnv = "HULL_CONFIG"

// globals are runc's global flags, and hull's own.
type globals struct {
	root, logPath, logFormat string
	debug, systemdCgroup     bool
	// hullConfig is hull's configuration file.
	hullConfig string
	// logFile is the opened --log, closed by Main.
	logFile *os.File
}

// exitStatus ends the program with a status and no message.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// Main runs hull-runtime with args (without the program name) and returns
// its exit status.
func Main(args []string) int {
	g := &globals{}
	root := newRoot(g)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	defer func() {
		if g.logFile != nil {
			_ = g.logFile.Close()
		}
	}()
	if err == nil {
		return 0
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	// containerd's runc shim and conmon read the last error of the log.
	logrus.StandardLogger().Error(err.Error())
	if g.logFile != nil {
		fmt.Fprintln(os.Stderr, "hull-runtime:", err)
	}
	return 1
}

func newRoot(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hull-runtime",
		Short: "An OCI runtime with runc's command line that runs each container in a VM of its own",
		Long: "hull-runtime runs containers in VMs with runc's command line, for Docker, Podman, nerdctl and\n" +
			"other container managers that drive runc. Each container gets a VM; a supervisor process\n" +
			"stands for it on the host (its PID is the container's).",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.setupLog(cmd)
		},
	}
	cmd.SetVersionTemplate(fmt.Sprintf("hull-runtime version %s\ncommit: %s\nspec: 1.0.2-dev\n", version.Version, version.Commit))
	f := cmd.PersistentFlags()
	f.StringVar(&g.root, "root", DefaultRoot, "root directory for the state of containers")
	f.StringVar(&g.logPath, "log", "", "log file (default: stderr)")
	f.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	f.BoolVar(&g.debug, "debug", false, "debug logging")
	f.BoolVar(&g.systemdCgroup, "systemd-cgroup", false, "cgroupsPath is in systemd's slice:prefix:name form (accepted; the form is recognized either way)")
	f.StringVar(&g.hullConfig, "hull-config", os.Getenv(ConfigEnv), "hull's configuration file (default: $"+ConfigEnv+", else the search path)")
	// runc's flags that have no meaning here.
	var ignored string
	var ignoredBool bool
	f.StringVar(&ignored, "criu", "", "ignored (checkpoints are not supported)")
	f.BoolVar(&ignoredBool, "rootless", false, "ignored")
	_ = f.MarkHidden("criu")
	_ = f.MarkHidden("rootless")
	cmd.AddCommand(
		newCreateCommand(g), newStartCommand(g), newStateCommand(g), newKillCommand(g),
		newDeleteCommand(g), newExecCommand(g), newPsCommand(g), newPauseCommand(g, true),
		newPauseCommand(g, false), newUpdateCommand(g), newFeaturesCommand(), newEventsCommand(g),
		newListCommand(g),
		newUnsupportedCommand("checkpoint", "checkpointing a container"),
		newUnsupportedCommand("restore", "restoring a container from a checkpoint"),
		newUnsupportedCommand("run", "run (use create and start)"),
		newSuperviseCommand(g), newStandinCommand(g),
	)
	return cmd
}

// setupLog sends the log where --log says, in --log-format.
func (g *globals) setupLog(cmd *cobra.Command) error {
	l := logrus.StandardLogger()
	l.SetLevel(logrus.WarnLevel)
	if g.debug {
		l.SetLevel(logrus.DebugLevel)
	}
	switch g.logFormat {
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{})
	case "text", "":
		l.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true})
	default:
		return fmt.Errorf("--log-format %q: want text or json", g.logFormat)
	}
	var out io.Writer = os.Stderr
	if g.logPath != "" {
		f, err := os.OpenFile(g.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_SYNC, 0o644) //nolint:gosec // G302: runc creates its log 0644
		if err != nil {
			return fmt.Errorf("opening --log: %w", err)
		}
		g.logFile, out = f, f
	}
	l.SetOutput(out)
	cmd.SetContext(log.WithLogger(cmd.Context(), logrus.NewEntry(l)))
	return nil
}

// selfArgs are the global flags to pass to a re-executed hull-runtime.
func (g *globals) selfArgs() []string {
	// The child runs in /: relative paths are made absolute here.
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	a := []string{"--root", g.root, "--log-format", g.logFormat}
	if g.logPath != "" {
		a = append(a, "--log", abs(g.logPath))
	}
	if g.debug {
		a = append(a, "--debug")
	}
	if g.hullConfig != "" {
		a = append(a, "--hull-config", abs(g.hullConfig))
	}
	return a
}

func newUnsupportedCommand(name, what string) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		Short:              "Not supported by hull-runtime",
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
		RunE: func(*cobra.Command, []string) error {
			return fmt.Errorf("%s: %w", what, errNotImplemented(name))
		},
	}
}

func errNotImplemented(what string) error {
	return fmt.Errorf("hull-runtime does not implement %s: %w", strings.TrimSpace(what), errNotImplementedClass)
}
