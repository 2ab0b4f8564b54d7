package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"
	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

func newFactoryTemplateCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Create, list and remove VM templates",
		Long: "A VM template is a pod VM booted until its agent answers and saved (RAM file and\n" +
			"device state) under factory.template_dir, keyed by the VM configuration. With\n" +
			"factory.template = true, a pod VM of that configuration starts from it instead of\n" +
			"booting. See docs/factory.md.",
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "create",
		Short: "Boot a VM of the configured pod VM configuration and save it as its template",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			sc, err := launch.SandboxConfig(c, fmt.Sprintf("template-%d", time.Now().UnixNano()))
			if err != nil {
				return err
			}
			sc.Template = launch.TemplateConfig(c, launch.QEMUOptions(c))
			sc.Transport = hypervisor.TransportSerial
			start := time.Now()
			key, err := sandbox.CreateTemplate(ctx, sc)
			if err != nil {
				return err
			}
			_, _ = fmt.Fprintf(cmd.OutOrStdout(), "template %s created in %s (%.1fs)\n",
				key, filepath.Join(c.Factory.TemplateDir, key), time.Since(start).Seconds())
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "ls",
		Short: "List the templates, marking the one of the current configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			// The current configuration's key; none when its assets are
			// missing.
			var current string
			if sc, err := launch.SandboxConfig(c, "template"); err == nil {
				sc.Template = launch.TemplateConfig(c, launch.QEMUOptions(c))
				current, _ = sandbox.TemplateKeyOf(sc)
			}
			ents, err := os.ReadDir(c.Factory.TemplateDir)
			if err != nil && !os.IsNotExist(err) {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			_, _ = fmt.Fprintln(w, "KEY\tCREATED\tMEMORY ON DISK\tCURRENT")
			for _, e := range ents {
				if !e.IsDir() || !sandbox.IsTemplateKey(e.Name()) {
					continue
				}
				dir := filepath.Join(c.Factory.TemplateDir, e.Name())
				st, err := os.Stat(filepath.Join(dir, "state"))
				if err != nil {
					continue
				}
				mark := ""
				if e.Name() == current {
					mark = "*"
				}
				_, _ = fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Name(), st.ModTime().UTC().Format(time.RFC3339),
					diskUsage(filepath.Join(dir, "memory")), mark)
			}
			return w.Flush()
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "rm KEY...",
		Short: "Remove templates",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			for _, key := range args {
				if !sandbox.IsTemplateKey(key) {
					return fmt.Errorf("%q is not a template key (64 hex digits): %w", key, errdefs.ErrInvalidArgument)
				}
				dir := filepath.Join(c.Factory.TemplateDir, key)
				if _, err := os.Lstat(dir); err != nil {
					return fmt.Errorf("template %s: %w", key, err)
				}
				// Clones map the files they were started from; removing
				// them leaves running clones as they are.
				if err := os.RemoveAll(dir); err != nil {
					return err
				}
				_, _ = fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", key)
			}
			return nil
		},
	})
	return cmd
}

// diskUsage is the space a (sparse) file takes, for humans.
func diskUsage(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	var blocks int64
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		blocks = s.Blocks
	}
	return fmt.Sprintf("%.1f MiB of %.0f MiB", float64(blocks*512)/(1<<20), float64(st.Size())/(1<<20))
}
