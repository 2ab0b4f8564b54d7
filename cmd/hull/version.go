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
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "hull %s (commit %s, %s)\n", version.Version, version.Commit, runtime.Version())
		},
	}
}
