package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
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
				var b strings.Builder
				fmt.Fprintf(&b, "sandbox %s: %s VM (%s, %s) pid %d; agent answered %.2fs after start\n",
					id, desc.Driver, desc.Machine, desc.Accel, desc.PID, ready.Seconds())
				for _, w := range desc.Warnings {
					fmt.Fprintf(&b, "  warning: %s\n", w)
				}
				fmt.Fprintf(&b, "agent:     %s, version %s (%s)\n", health.GetStatus(), details.GetAgentVersion(), details.GetAgentCommit())
				fmt.Fprintf(&b, "kernel:    %s %s\n", details.GetKernelRelease(), details.GetKernelVersion())
				fmt.Fprintf(&b, "cpus:      %d\n", details.GetCpus())
				fmt.Fprintf(&b, "memory:    %d MiB total, %d MiB available\n", details.GetMemoryTotalBytes()>>20, details.GetMemoryAvailableBytes()>>20)
				fmt.Fprintf(&b, "transport: %s\n", details.GetTransport())
				fmt.Fprintf(&b, "features:  %v\n", details.GetFeatures())
				fmt.Fprintf(&b, "modules:   %v\n", details.GetModules())
				fmt.Fprintf(&b, "guest clock: agent main %s, serving %s, first answer %s\n",
					details.GetAgentStart().AsDuration().Round(time.Millisecond), details.GetBootToServe().AsDuration().Round(time.Millisecond),
					details.GetFirstAnswer().AsDuration().Round(time.Millisecond))
				for _, w := range details.GetWarnings() {
					fmt.Fprintf(&b, "  guest warning: %s\n", w)
				}
				if _, err := io.WriteString(out, b.String()); err != nil {
					return err
				}
			}
			return sb.Stop(ctx)
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "sandbox id (default: boot-<time>)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
