package main

import (
	"context"
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
	assetsDir  string
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "hull",
		Short:         "Administer the hull VM-isolated container runtime",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := log.SetLevel(g.logLevel); err != nil {
				return err
			}
			logrus.SetOutput(os.Stderr)
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", "", "configuration file (default: "+config.SearchPaths[0]+", then "+config.SearchPaths[1]+")")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "log level: trace, debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.assetsDir, "assets-dir", "", "guest assets directory (overrides image.assets_dir)")
	root.AddCommand(
		newCheckCommand(g),
		newEnvCommand(g),
		newImageCommand(g),
		newBootCommand(g),
		newRunCommand(g),
		newExecCommand(g),
		newAgentCommand(g),
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
	log.G(ctx).WithField("source", c.Source).Debug("configuration loaded")
	return c, nil
}
