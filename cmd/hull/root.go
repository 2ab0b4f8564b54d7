package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/config"
)

type globalFlags struct {
	configPath string
	logLevel   string
	// logLevelSet says that --log-level was given: it then wins over the
	// configuration's runtime.log_level.
	logLevelSet bool
	assetsDir   string
}

func newRootCommand() *cobra.Command {
	return newRootCommandWith(&globalFlags{})
}

// newRootCommandWith is the root command with its global flags in g.
func newRootCommandWith(g *globalFlags) *cobra.Command {
	root := &cobra.Command{
		Use:           "hull",
		Short:         "Administer the hull VM-isolated container runtime",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			g.logLevelSet = cmd.Flags().Changed("log-level")
			if err := log.SetLevel(g.logLevel); err != nil {
				return err
			}
			logrus.SetOutput(os.Stderr)
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", "", "configuration file (default: "+config.SearchPaths[0]+", then "+config.SearchPaths[1]+")")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "log level: trace, debug, info, warn, error (default: warn, or debug/trace when the configuration's runtime.log_level says so)")
	root.PersistentFlags().StringVar(&g.assetsDir, "assets-dir", "", "guest assets directory (overrides image.assets_dir)")
	root.AddCommand(
		newCheckCommand(g),
		newEnvCommand(g),
		newImageCommand(g),
		newBootCommand(g),
		newRunCommand(g),
		newExecCommand(g),
		newAgentCommand(g),
		newMonitorCommand(g),
		newListCommand(g),
		newLogsCommand(g),
		newFactoryCommand(g),
		newVersionCommand(),
	)
	return root
}

// load reads the configuration and applies the global overrides.
func (g *globalFlags) load(ctx context.Context) (*config.Config, error) {
	c, err := config.Load(g.configPath)
	if err != nil {
		return nil, err
	}
	if g.assetsDir != "" {
		dir, err := filepath.Abs(g.assetsDir)
		if err != nil {
			return nil, err
		}
		c.Image.AssetsDir = dir
		if err := c.Validate(); err != nil {
			return nil, err
		}
	}
	if !g.logLevelSet {
		if err := raiseLogLevel(c.Runtime.LogLevel); err != nil {
			return nil, err
		}
	}
	log.G(ctx).WithField("source", c.Source).Debug("configuration loaded")
	return c, nil
}

// raiseLogLevel turns on hull's debug (or trace) lines when the
// configuration's runtime.log_level asks for them, as it does for the
// shim's. Quieter settings leave hull at its interactive default (warn):
// runtime.log_level = "info", the default, is the shim's level for
// containerd's log and would bury a command's output.
func raiseLogLevel(level string) error {
	l, err := logrus.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("runtime.log_level: %w", err)
	}
	if l >= logrus.DebugLevel && l > logrus.GetLevel() {
		logrus.SetLevel(l)
	}
	return nil
}
