package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/ociimage"
)

func newImageBusyboxCommand() *cobra.Command {
	var (
		output  string
		name    string
		busybox string
	)
	cmd := &cobra.Command{
		Use:   "busybox",
		Short: "Write a busybox container image (OCI layout tar) built from busybox-static",
		Long: "Write a reproducible OCI image archive of busybox, built locally from a static busybox\n" +
			"binary, for `ctr images import` where no registry is reachable (demos, tests).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ociimage.WriteBusyboxFile(output, ociimage.BusyboxOptions{Name: name, Busybox: busybox}); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", output)
			return err
		},
	}
	cmd.Flags().StringVar(&output, "output", "busybox.tar", "archive to write")
	cmd.Flags().StringVar(&name, "name", ociimage.DefaultName, "image reference")
	cmd.Flags().StringVar(&busybox, "busybox", ociimage.DefaultBusybox, "static busybox binary")
	return cmd
}
