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
		pause   bool
	)
	cmd := &cobra.Command{
		Use:   "busybox",
		Short: "Write a busybox container image (OCI layout tar) built from busybox-static",
		Long: "Write a reproducible OCI image archive of busybox, built locally from a static busybox\n" +
			"binary, for `ctr images import` where no registry is reachable (demos, tests).\n" +
			"With --pause, write the pause image instead (" + ociimage.DefaultPauseName + " by default):\n" +
			"the same busybox whose entrypoint sleeps until SIGTERM or SIGINT, for containerd's CRI\n" +
			"sandbox_image.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := ociimage.BusyboxOptions{Name: ociimage.DefaultName}
			if pause {
				opts = ociimage.PauseOptions()
				if !cmd.Flags().Changed("output") {
					output = "pause.tar"
				}
			}
			if cmd.Flags().Changed("name") {
				opts.Name = name
			}
			opts.Busybox = busybox
			if err := ociimage.WriteBusyboxFile(output, opts); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", output)
			return err
		},
	}
	cmd.Flags().StringVar(&output, "output", "busybox.tar", "archive to write (pause.tar with --pause)")
	cmd.Flags().StringVar(&name, "name", ociimage.DefaultName, "image reference ("+ociimage.DefaultPauseName+" with --pause)")
	cmd.Flags().StringVar(&busybox, "busybox", ociimage.DefaultBusybox, "static busybox binary")
	cmd.Flags().BoolVar(&pause, "pause", false, "write the pause (pod sandbox) image")
	return cmd
}
