package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

func TestRaiseLogLevel(t *testing.T) {
	saved := logrus.GetLevel()
	t.Cleanup(func() { logrus.SetLevel(saved) })
	for _, tc := range []struct {
		config string
		want   logrus.Level
	}{
		{"info", logrus.WarnLevel},
		{"error", logrus.WarnLevel},
		{"debug", logrus.DebugLevel},
		{"trace", logrus.TraceLevel},
	} {
		t.Run(tc.config, func(t *testing.T) {
			logrus.SetLevel(logrus.WarnLevel)
			if err := raiseLogLevel(tc.config); err != nil {
				t.Fatal(err)
			}
			if got := logrus.GetLevel(); got != tc.want {
				t.Errorf("level %s, want %s", got, tc.want)
			}
		})
	}
}

func TestLogLevelFlagWins(t *testing.T) {
	saved := logrus.GetLevel()
	t.Cleanup(func() { logrus.SetLevel(saved) })
	cfg := filepath.Join(t.TempDir(), "hull.toml")
	if err := os.WriteFile(cfg, []byte("[runtime]\nlog_level = \"trace\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want logrus.Level
	}{
		{"configuration", []string{"--config", cfg, "load"}, logrus.TraceLevel},
		{"flag", []string{"--config", cfg, "--log-level", "error", "load"}, logrus.ErrorLevel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &globalFlags{}
			root := newRootCommandWith(g)
			root.AddCommand(&cobra.Command{Use: "load", RunE: func(cmd *cobra.Command, _ []string) error {
				_, err := g.load(cmd.Context())
				return err
			}})
			root.SetArgs(tc.args)
			if err := root.ExecuteContext(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := logrus.GetLevel(); got != tc.want {
				t.Errorf("level %s, want %s", got, tc.want)
			}
		})
	}
}
