package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

func newBootCommand(g *globalFlags) *cobra.Command {
	var (
		id     string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "boot",
		Short: "Boot a VM, print what its agent reports, and shut it down",
		Long: "Boot a VM with the configured guest assets, wait for the agent, print the agent's\n" +
			"health and guest details, then shut the VM down. A developer check of the whole boot path.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			if id == "" {
				id = fmt.Sprintf("boot-%d", time.Now().UnixNano())
			}
			sc, err := launch.SandboxConfig(c, id)
			if err != nil {
				return err
			}
			start := time.Now()
			sb, err := sandbox.Start(ctx, sc)
			if err != nil {
				return err
			}
			ready := time.Since(start)
			defer sb.Stop(ctx) //nolint:errcheck // reported below on the normal path

			health, err := sb.System().Health(ctx, &agent.HealthRequest{})
			if err != nil {
				return err
			}
			details, err := sb.System().GuestDetails(ctx, &agent.GuestDetailsRequest{})
			if err != nil {
				return err
			}
			desc := sb.VM().Describe()
			out := cmd.OutOrStdout()
			if asJSON {
				mo := protojson.MarshalOptions{UseProtoNames: true}
				h, _ := mo.Marshal(health)
				d, _ := mo.Marshal(details)
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(map[string]any{
					"sandbox": id, "vm": desc, "agent_ready_ms": ready.Milliseconds(),
					"health": json.RawMessage(h), "guest": json.RawMessage(d),
				}); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "sandbox %s: %s VM (%s, %s) pid %d; agent answered %.2fs after start\n",
					id, desc.Driver, desc.Machine, desc.Accel, desc.PID, ready.Seconds())
				for _, w := range desc.Warnings {
					fmt.Fprintf(out, "  warning: %s\n", w)
				}
				fmt.Fprintf(out, "agent:     %s, version %s (%s)\n", health.GetStatus(), details.GetAgentVersion(), details.GetAgentCommit())
				fmt.Fprintf(out, "kernel:    %s %s\n", details.GetKernelRelease(), details.GetKernelVersion())
				fmt.Fprintf(out, "cpus:      %d\n", details.GetCpus())
				fmt.Fprintf(out, "memory:    %d MiB total, %d MiB available\n", details.GetMemoryTotalBytes()>>20, details.GetMemoryAvailableBytes()>>20)
				fmt.Fprintf(out, "transport: %s\n", details.GetTransport())
				fmt.Fprintf(out, "features:  %v\n", details.GetFeatures())
				fmt.Fprintf(out, "modules:   %v\n", details.GetModules())
				fmt.Fprintf(out, "boot to serve (guest clock): %s\n", details.GetBootToServe().AsDuration())
				for _, w := range details.GetWarnings() {
					fmt.Fprintf(out, "  guest warning: %s\n", w)
				}
			}
			return sb.Stop(ctx)
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "sandbox id (default: boot-<time>)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
