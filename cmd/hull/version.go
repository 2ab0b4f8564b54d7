package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/version"
)

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print hull's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "hull %s (commit %s, %s)\n", version.Version, version.Commit, runtime.Version())
			return err
		},
	}
}
