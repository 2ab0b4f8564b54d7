package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/agentctl"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// agentStopTimeout bounds the stop of the VM that --boot started.
const agentStopTimeout = time.Minute

func newAgentCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Call a hull agent's methods directly, for testing and debugging agents",
		Long: "Talk to a hull agent without the runtime in between: call any method of its ttRPC API\n" +
			"by name with a JSON request and print the JSON answer, one call or a script of them.",
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newAgentCallCommand(g), newAgentListCommand())
	return cmd
}

func newAgentListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the agent's methods with their request and response messages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Writes to a strings.Builder do not fail.
			var b strings.Builder
			tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
			_, _ = fmt.Fprintln(tw, "METHOD\tREQUEST\tRESPONSE")
			for _, m := range agentctl.Methods() {
				_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name(), m.Request(), m.Response())
			}
			_ = tw.Flush()
			_, err := io.WriteString(cmd.OutOrStdout(), b.String())
			return err
		},
	}
}

// agentTarget is the agent that `hull agent call` talks to.
type agentTarget struct {
	addr    string
	boot    bool
	timeout time.Duration
	// timeoutSet: --timeout was given, and replaces agent.call_timeout
	// of the configuration for --boot.
	timeoutSet bool
}

func newAgentCallCommand(g *globalFlags) *cobra.Command {
	var (
		t      agentTarget
		script string
	)
	cmd := &cobra.Command{
		Use:   "call {--addr ADDR | --boot} {METHOD [REQUEST-JSON] | -f FILE}",
		Short: "Call agent methods by name with JSON requests",
		Long: "Call one method of a hull agent, or a script of calls on one connection, and print\n" +
			"each answer as JSON with the proto's field names.\n\n" +
			"METHOD is Service.Method as in api/agent/v1 (System.Health) or the full ttRPC name\n" +
			"(/hull.agent.v1.System/Health); `hull agent list` shows every method with its request\n" +
			"and response messages. REQUEST-JSON is the request in protobuf's JSON mapping, {} when\n" +
			"absent; an unknown field is an error. bytes fields are base64.\n\n" +
			"The agent is one of:\n" +
			"  --addr unix:PATH       an agent serving with `hull-agent --listen unix:PATH`\n" +
			"  --addr vsock:CID:PORT  an agent listening on vsock\n" +
			"  --boot                 a throwaway VM booted with the configured guest assets as\n" +
			"                         `hull boot` does, stopped at the end (its guest sandbox is\n" +
			"                         created already: start with Containers.CreateContainer)\n\n" +
			"With -f FILE (- for standard input) every line of FILE is a call, METHOD [REQUEST-JSON];\n" +
			"blank lines and lines starting with # are skipped. The whole file is checked first;\n" +
			"then the calls run in order, each answer after a \"# METHOD\" line, and the first\n" +
			"failing call ends the run, naming its line. A failed call exits with status 1 and\n" +
			"prints the agent's error with its class (\"not found: ...\").",
		Example: "  hull agent list\n" +
			"  hull agent call --addr unix:/tmp/agent.sock System.GuestDetails\n" +
			"  hull agent call --addr vsock:3:1024 Containers.ListProcesses '{\"container_id\": \"c1\"}'\n" +
			"  hull agent call --boot -f lifecycle.txt",
		Args: func(cmd *cobra.Command, args []string) error {
			if script != "" && len(args) > 0 {
				return fmt.Errorf("give either -f or METHOD [REQUEST-JSON], not both: %w", errdefs.ErrInvalidArgument)
			}
			if script == "" && (len(args) < 1 || len(args) > 2) {
				return fmt.Errorf("want METHOD [REQUEST-JSON] or -f FILE (`hull agent list` shows the methods): %w", errdefs.ErrInvalidArgument)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if (t.addr != "") == t.boot {
				return fmt.Errorf("give exactly one of --addr and --boot: %w", errdefs.ErrInvalidArgument)
			}
			t.timeoutSet = cmd.Flags().Changed("timeout")
			out := cmd.OutOrStdout()
			// Everything is checked before an agent is reached: a typo
			// should not cost a VM boot.
			if script != "" {
				name, steps, err := readScript(cmd.InOrStdin(), script)
				if err != nil {
					return err
				}
				return t.with(ctx, g, func(c *agentclient.Client) error {
					if err := agentctl.NewCaller(c, 0).Run(ctx, steps, out); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
					return nil
				})
			}
			m, err := agentctl.Lookup(args[0])
			if err != nil {
				return err
			}
			var js string
			if len(args) == 2 {
				js = args[1]
			}
			req, err := m.NewRequest(js)
			if err != nil {
				return err
			}
			return t.with(ctx, g, func(c *agentclient.Client) error {
				resp, err := agentctl.NewCaller(c, 0).Call(ctx, m, req)
				if err != nil {
					return err
				}
				b, err := agentctl.Format(resp)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(out, "%s\n", b)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&t.addr, "addr", "", "agent address: unix:PATH or vsock:CID:PORT")
	cmd.Flags().BoolVar(&t.boot, "boot", false, "boot a throwaway VM with the configured assets and call its agent")
	cmd.Flags().DurationVar(&t.timeout, "timeout", agentclient.DefaultCallTimeout, "bound of each call but those that wait by design (WaitProcess, WaitOOM, WaitDebugConsole: ^C ends them); of connecting too with --addr; given with --boot, it replaces agent.call_timeout")
	cmd.Flags().StringVarP(&script, "file", "f", "", "run the calls of a script `FILE`, one per line (- for standard input)")
	return cmd
}

// readScript reads and checks the script at path, standard input for "-",
// and returns the name to give it in errors.
func readScript(stdin io.Reader, path string) (string, []agentctl.Step, error) {
	name, r := "standard input", stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return "", nil, err
		}
		defer func() { _ = f.Close() }()
		name, r = path, f
	}
	steps, err := agentctl.ParseScript(r)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, err)
	}
	return name, steps, nil
}

// with connects to the target's agent, runs f, and disconnects; for --boot
// it boots the VM first and stops it afterwards, also when f fails or the
// command is interrupted.
func (t agentTarget) with(ctx context.Context, g *globalFlags, f func(*agentclient.Client) error) (retErr error) {
	if !t.boot {
		ep, err := agentctl.ParseAddr(t.addr)
		if err != nil {
			return err
		}
		if ep.Transport == hypervisor.TransportSerial {
			// Dial retries while a VM boots; a missing socket here
			// will not appear.
			if _, err := os.Stat(ep.SocketPath); err != nil {
				return fmt.Errorf("agent at %s: %w", t.addr, err)
			}
		}
		// The agent replays its recent log to every new reader, lines of
		// earlier connections included: only worth it when asked for.
		c, err := agentclient.Dial(ctx, ep, agentclient.Options{
			DialTimeout: t.timeout, CallTimeout: t.timeout,
			NoLogStream: log.GetLevel() < log.InfoLevel,
		})
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		return f(c)
	}

	c, err := g.load(ctx)
	if err != nil {
		return err
	}
	sc, err := launch.SandboxConfig(c, fmt.Sprintf("agent-%d", time.Now().UnixNano()))
	if err != nil {
		return err
	}
	if t.timeoutSet {
		sc.CallTimeout = t.timeout
	}
	sb, err := sandbox.Start(ctx, sc)
	if err != nil {
		return err
	}
	defer func() {
		// A context of its own: the command's ends on SIGINT, and the VM
		// has to go all the same.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentStopTimeout)
		defer cancel()
		retErr = errors.Join(retErr, sb.Stop(sctx))
	}()
	return f(sb.Agent())
}
